"""graft::gather (kernels/gather.py) against its reference, torch.cat, under Triton's interpreter.

A copy is exact, so every comparison is exact (rtol = atol = 0), fp16 and bf16 included. bf16 is
tested on the CPU too: the kernel moves bf16 as int16 words (no tl.dot, no float arithmetic), so
the interpreter's bf16 problems do not arise.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before graft_fx.kernels defines its kernels

import pytest  # noqa: E402
import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from graft_fx.errors import GraftError  # noqa: E402
from graft_fx.kernels import gather as gather_module  # noqa: E402
from graft_fx.kernels.dispatch import HAS_TRITON, use_triton  # noqa: E402
from graft_fx.kernels.gather import gather, gather_reference, gather_triton  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.int8, torch.complex64)
# (rows per input, row shape): segments of 0 and 1 rows, all empty, row sizes that are no multiple of any block
CASES = (
    ((1,), (5,)),
    ((3, 0, 1), (7,)),
    ((0, 0), (3, 5)),
    ((2, 1, 0, 5, 1, 3), (3, 5)),
    ((4, 9), ()),
    ((1, 2), (2, 3, 7)),
    ((2, 3), (4, 0)),
)

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")


def make(rows, row, dtype, device="cpu", seed=0) -> list[torch.Tensor]:
    """Inputs of ``rows[i]`` rows of shape ``row``: random values of ``dtype`` (bools half true)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn((m, *row), generator=g) * 50 for m in rows]
    if dtype == torch.bool:
        return [(x > 0).to(device) for x in xs]
    return [x.to(dtype).to(device) for x in xs]


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.is_contiguous()
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,row", CASES)
def test_matches_reference(rows, row, dtype):
    xs = make(rows, row, dtype)
    assert_same(gather(xs), gather_reference(xs))
    assert_same(gather(xs), torch.cat(xs))


@needs_triton
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bool, torch.complex128), ids=str)
@pytest.mark.parametrize("block_bytes,max_programs", ((16, 1), (16, 2), (32, 3), (4096, 1024)))
def test_tiling(block_bytes, max_programs, dtype):
    """Small blocks and few programs: partial last blocks, programs past an input's end, and the
    strided loop over several blocks per program."""
    xs = make((5, 0, 1, 13, 2), (3, 3), dtype)
    assert_same(gather_triton(xs, block_bytes=block_bytes, max_programs=max_programs), torch.cat(xs))


@needs_triton
def test_op_runs_the_kernel(monkeypatch):
    """Under the interpreter the op takes the Triton path, not the reference."""
    xs = make((2, 3), (4,), torch.float32)
    assert use_triton(*xs)

    def refuse(xs):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(gather_module, "gather_reference", refuse)
    assert_same(gather(xs), torch.cat(xs))


@needs_triton
def test_empty_output_launches_nothing(monkeypatch):
    monkeypatch.setattr(gather_module, "_gather_kernel", None)  # indexing it would raise
    for rows, row in (((0,), (3,)), ((0, 0, 0), (2, 2)), ((2, 1), (0,))):
        out = gather_triton(make(rows, row, torch.float32))
        assert out.shape == (sum(rows), *row) and out.dtype == torch.float32


def test_views():
    """Narrow views along dim 0 are read in place; strided inputs are made contiguous; an input
    may appear twice."""
    base = torch.arange(60.0).view(12, 5)
    narrow = [base[0:3], base[7:8], base[3:3], base[2:9]]
    assert all(x.is_contiguous() for x in narrow)
    assert_same(gather(narrow), torch.cat(narrow))
    strided = [base.t()[:, :4], base[:3, 1:], base[::3, :4]]
    assert not any(x.is_contiguous() for x in strided)
    assert_same(gather(strided), torch.cat(strided))
    assert_same(gather([base[1:4], base[1:4]]), torch.cat([base[1:4], base[1:4]]))
    assert_same(gather((base[:2], base[5:6])), torch.cat([base[:2], base[5:6]]))  # a tuple as well


def test_output_is_new():
    x = torch.ones(3, 2)
    out = gather([x])
    out.zero_()
    assert x.eq(1).all()


def test_fake_impl():
    with FakeTensorMode():
        xs = [torch.empty(3, 4, 5, dtype=torch.float16), torch.empty(0, 4, 5, dtype=torch.float16),
              torch.empty(7, 4, 5, dtype=torch.float16)]
        out = torch.ops.graft.gather(xs)
    assert out.shape == (10, 4, 5) and out.dtype == torch.float16 and out.device.type == "cpu"


@pytest.mark.parametrize("requires_grad", (False, True))
def test_opcheck(requires_grad):
    xs = [t.requires_grad_(requires_grad) for t in make((2, 0, 3), (3,), torch.float32)]
    torch.library.opcheck(torch.ops.graft.gather, (xs,))


def test_opcheck_integer():
    torch.library.opcheck(torch.ops.graft.gather, (make((1, 2), (2, 3), torch.int64),))


def test_flop_counter_knows_the_op():
    xs = make((2, 3), (4,), torch.float32)
    with FlopCounterMode(display=False) as counter:
        gather(xs)
    assert torch.ops.graft.gather in counter.get_flop_counts()["Global"]
    assert counter.get_total_flops() == 0


def test_autograd():
    xs = [t.requires_grad_() for t in make((2, 0, 3), (4,), torch.float64)]
    ys = [t.detach().clone().requires_grad_() for t in xs]
    weight = torch.randn(5, 4, dtype=torch.float64)
    (gather(xs) * weight).sum().backward()
    (torch.cat(ys) * weight).sum().backward()
    for x, y in zip(xs, ys):
        assert_same(x.grad, y.grad)


@pytest.mark.parametrize("dynamic", (False, True))
def test_torch_compile(dynamic):
    def fn(a, b, c):
        return gather([a, b[1:], c]) * 2

    args = make((3, 4, 1), (6,), torch.float32)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    assert_same(compiled(*args), fn(*args))
    args = make((1, 5, 2), (6,), torch.float32, seed=1)  # other row counts: a recompile or the symbolic graph
    assert_same(compiled(*args), fn(*args))


@pytest.mark.parametrize("xs,message,schema_ok", (
    ([], "empty list", True),
    (torch.ones(2, 3), "list of tensors", False),
    ([torch.ones(2, 3), 4.0], r"xs\[1\] is a float", False),
    ([torch.tensor(1.0)], "zero-dimensional", True),
    ([torch.ones(2, 3), torch.ones(2, 4)], r"rows of shape \[4\], expected \[3\]", True),
    ([torch.ones(2, 3), torch.ones(2)], r"rows of shape \[\], expected \[3\]", True),
    ([torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float16)], "dtype torch.float16, expected torch.float32", True),
    ([torch.ones(2, 3), torch.ones(2, 3, device="meta")], "is on meta, expected cpu", True),
))
def test_bad_inputs(xs, message, schema_ok):
    """Clear GraftErrors from the public function, the reference and (where the op's schema
    admits the arguments at all: else the dispatcher's own error comes first) the op."""
    calls = (gather, gather_reference, torch.ops.graft.gather) if schema_ok else (gather, gather_reference)
    for call in calls:
        with pytest.raises(GraftError, match=message):
            call(xs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
@pytest.mark.parametrize("rows,row", CASES + (((64, 1, 8), (64, 56, 56)), ((1,) * 40, (768,))))
def test_cuda(rows, row, dtype):
    xs = make(rows, row, dtype, device="cuda")
    assert_same(gather(xs), torch.cat(xs))
