"""graft::segment_conv2d against its per-segment reference, and its registration."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from graft_fx import GraftError
from graft_fx.kernels.segment_conv2d import segment_conv2d, segment_conv2d_reference

CONVS = {  # channels in, channels out, kernel, stride, padding, dilation, groups
    "3x3": (4, 6, 3, (1, 1), (1, 1), (1, 1), 1),
    "strided": (4, 5, 3, (2, 2), (0, 0), (1, 1), 1),
    "dilated": (4, 4, 3, (1, 1), (2, 2), (2, 2), 1),
    "grouped": (4, 6, 1, (1, 1), (0, 0), (1, 1), 2),
    "depthwise": (4, 4, 3, (1, 1), (1, 1), (1, 1), 4),
}
SIZES = [(2, 2, 2), (1, 1), (3, 0, 1), (0, 0), (4,)]


def make(conv, sizes, dtype=torch.float32, bias=True):
    c, c_out, k, stride, padding, dilation, groups = CONVS[conv]
    g = torch.Generator().manual_seed(sum(sizes) + len(sizes))
    x = torch.randn(sum(sizes), c, 7, 6, generator=g).to(dtype)
    weight = torch.randn(len(sizes), c_out, c // groups, k, k, generator=g).to(dtype)
    b = torch.randn(len(sizes), c_out, generator=g).to(dtype) if bias else None
    return (x, weight, b, list(sizes)), (stride, padding, dilation, groups)


@pytest.mark.parametrize("conv", list(CONVS))
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("bias", [True, False])
def test_the_op_equals_the_reference(conv, sizes, bias):
    args, options = make(conv, sizes, bias=bias)
    torch.testing.assert_close(segment_conv2d(*args, *options), segment_conv2d_reference(*args, *options),
                               rtol=1e-4, atol=1e-4)


def test_half_precision():
    args, options = make("3x3", (2, 2), torch.float16)
    expected = segment_conv2d_reference(*[a.float() if isinstance(a, torch.Tensor) else a for a in args], *options)
    torch.testing.assert_close(segment_conv2d(*args, *options).float(), expected, rtol=1e-2, atol=1e-2)


def test_the_fake_and_the_flop_formula():
    args, options = make("strided", (2, 1, 3))
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        out = segment_conv2d(*fake, *options)
    real = segment_conv2d(*args, *options)
    assert out.shape == real.shape
    with FlopCounterMode(display=False) as counter:
        segment_conv2d(*args, *options)
    x, weight = args[0], args[1]
    assert counter.get_total_flops() == 2 * x.shape[0] * real[0].numel() * weight[0, 0].numel()


def test_opcheck():
    args, options = make("grouped", (2, 2))
    torch.library.opcheck(torch.ops.graft.segment_conv2d, (*args, *[list(o) for o in options[:3]], options[3]),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("change, words", [
    (lambda x, w, b, n: (x, w, b, [3, 3]), "summing to x's 6 rows"),
    (lambda x, w, b, n: (x[:, :2], w, b, n), "2 channels"),
    (lambda x, w, b, n: (x, w, b[:, :2], n), r"bias must be \[G, C_out\]"),
    (lambda x, w, b, n: (x, w.double(), b, n), "one dtype"),
])
def test_bad_inputs_say_what_is_wrong(change, words):
    args, options = make("3x3", (2, 2, 2))
    with pytest.raises(GraftError, match=words):
        segment_conv2d(*change(*args), *options)
