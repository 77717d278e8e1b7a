"""graft::segment_affine against its per-segment reference, and its registration."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from graft_fx import GraftError
from graft_fx.kernels.segment_affine import segment_affine, segment_affine_reference

SHAPES = {  # row shape, parameter shape per segment
    "channels": ((3, 4, 5), (3, 1, 1)),   # batch norm on images
    "tokens": ((5, 6), (1, 6)),           # layer norm on tokens
    "features": ((7,), (7,)),             # layer norm on rows
}
SIZES = [(2, 3, 1), (0, 4, 0), (1, 1, 1), (0, 0, 0), (5,)]


def make(kind, sizes, dtype=torch.float32, shift=True):
    row, b = SHAPES[kind]
    g = torch.Generator().manual_seed(len(sizes) + sum(sizes))
    x = torch.randn(sum(sizes), *row, generator=g).to(dtype)
    scale = torch.randn(len(sizes), *b, generator=g).to(dtype)
    return x, scale, (torch.randn(len(sizes), *b, generator=g).to(dtype) if shift else None)


def test_a_center_is_subtracted_first():
    """Batch norm's mean is subtracted before scaling: a large mean cancels no digits."""
    x, scale, shift = make("channels", (2, 3))
    center = torch.full_like(scale, 2e4)
    x = x * 10 + 2e4
    expected = segment_affine_reference(x.double(), scale.double(), shift.double(), [2, 3], center.double())
    got = segment_affine(x, scale, shift, [2, 3], center)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shift", [True, False])
def test_the_op_equals_the_reference(kind, sizes, dtype, shift):
    x, scale, bias = make(kind, sizes, dtype, shift)
    torch.testing.assert_close(segment_affine(x, scale, bias, sizes), segment_affine_reference(x, scale, bias, sizes))


def test_the_fake_and_the_flop_formula():
    x, scale, shift = make("channels", (2, 3, 1))
    with FakeTensorMode() as mode:
        out = segment_affine(mode.from_tensor(x), mode.from_tensor(scale), mode.from_tensor(shift), [2, 3, 1])
    assert out.shape == x.shape and out.dtype == x.dtype
    with FlopCounterMode(display=False) as counter:
        segment_affine(x, scale, shift, [2, 3, 1])
    assert counter.get_total_flops() == 2 * x.numel()


def test_opcheck_and_compile():
    x, scale, shift = make("tokens", (2, 1, 3))
    torch.library.opcheck(torch.ops.graft.segment_affine, (x, scale, shift, [2, 1, 3]),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    compiled = torch.compile(lambda a, s, t: segment_affine(a, s, t, [2, 1, 3]), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, scale, shift), segment_affine_reference(x, scale, shift, [2, 1, 3]))


@pytest.mark.parametrize("change, words", [
    (lambda x, s, t, n: (x, s, t, [2, 3]), "2 sizes for 3 segments"),
    (lambda x, s, t, n: (x, s, t, [2, 3, 2]), "sum to x's 6 rows"),
    (lambda x, s, t, n: (x, s.double(), t, n), "one dtype"),
    (lambda x, s, t, n: (x, s[:, :2], t, n), "does not broadcast"),
    (lambda x, s, t, n: (x, s, t[:2], n), "shaped like scale"),
])
def test_bad_inputs_say_what_is_wrong(change, words):
    x, scale, shift = make("channels", (2, 3, 1))
    with pytest.raises(GraftError, match=words):
        segment_affine(*change(x, scale, shift, [2, 3, 1]))
