"""graft::gather_linear against its reference, under Triton's interpreter on the CPU (or on CUDA)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton's interpreter on the CPU; set before the kernels are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from graft_fx.errors import GraftError  # noqa: E402
from graft_fx.kernels import gather_linear as module  # noqa: E402
from graft_fx.kernels.dispatch import use_triton  # noqa: E402
from graft_fx.kernels.gather_linear import gather_linear, gather_linear_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
              DEVICE != "cuda", reason="bf16 tl.dot is wrong under Triton's interpreter: GPU only"))]
TOLERANCE = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.float16: {"atol": 1e-2, "rtol": 1e-2},
             torch.bfloat16: {"atol": 5e-2, "rtol": 2e-2}}


def make(rows: list[int], k: int, n: int, dtype=torch.float32, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(m, k, generator=g).to(DEVICE, dtype) for m in rows]
    weight = (torch.randn(n, k, generator=g) / k ** 0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if bias else None
    return xs, weight, b


@pytest.fixture
def launches(monkeypatch):
    """Counts the kernel's launches, so that a test that silently ran the reference fails; skips
    the test where Triton cannot run (the other tests check the reference path there)."""
    if not use_triton(torch.empty(0, device=DEVICE)):
        pytest.skip("needs Triton: CUDA, or its interpreter on the CPU (TRITON_INTERPRET=1)")
    count = []
    launch = module._launch
    monkeypatch.setattr(module, "_launch", lambda *args: count.append(1) or launch(*args))
    return count


def check(xs, weight, bias, activation="none"):
    out = gather_linear(xs, weight, bias, activation)
    expected = gather_linear_reference(xs, weight, bias, activation)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, **TOLERANCE[weight.dtype])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, k, n", [
    ([3, 5], 16, 16),
    ([0, 1, 7], 20, 33),          # a segment of 0 rows and one of 1; K, N not multiples of 16
    ([40], 48, 17),
    ([17, 0, 2, 23], 70, 9),      # K spans two BLOCK_K = 64 tiles
    ([1, 1, 1], 5, 3),
])
def test_matches_reference(rows, k, n, dtype, launches):
    check(*make(rows, k, n, dtype))
    assert launches


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_tiles(dtype, launches, monkeypatch):
    """16 x 16 x 16 tiles: several row, column and K tiles per input, and programs past a short
    input's rows (which return at once)."""
    monkeypatch.setattr(module, "_blocks", lambda max_rows: (16, 16, 16))
    check(*make([40, 3, 0, 17], 40, 35, dtype), "gelu")
    assert launches


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue(activation, bias, dtype, launches):
    check(*make([6, 0, 19], 24, 21, dtype, bias=bias), activation)
    assert launches


def test_narrow_views_read_in_place(launches):
    big, other = torch.randn(10, 24, device=DEVICE), torch.randn(4, 24, device=DEVICE)
    xs = [big.narrow(0, 2, 3), other, big[7:]]
    weight = torch.randn(18, 24, device=DEVICE)
    assert all(module._readable(x) is x for x in xs)
    table = module._table(xs, big.device).tolist()
    assert table[:3] == [x.data_ptr() for x in xs] and table[3:7] == [0, 3, 7, 10]
    out = check(xs, weight, None)
    assert launches
    torch.testing.assert_close(out[:3], big[2:5] @ weight.T)


def test_row_strides_and_strided_last_dim(launches):
    wide = torch.randn(9, 40, device=DEVICE)
    every_other_row = wide[::2, :16]                       # row stride 80, read in place
    transposed = torch.randn(16, 5, device=DEVICE).T       # stride(1) = 5: made contiguous
    assert module._readable(every_other_row) is every_other_row
    assert module._readable(transposed).is_contiguous()
    weight_t = torch.randn(16, 12, device=DEVICE).T        # weight [12, 16] read through its strides
    check([every_other_row, transposed], weight_t, torch.randn(12, device=DEVICE), "relu")
    assert launches


@pytest.mark.parametrize("rows, k, n", [([0], 8, 5), ([0, 0], 8, 5), ([3, 2], 8, 0), ([3, 0, 2], 0, 5)])
def test_empty(rows, k, n):
    xs, weight, bias = make(rows, k, n)
    out = check(xs, weight, bias, "gelu")
    assert out.shape == (sum(rows), n)


def test_fake_tensor_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        xs = [torch.empty(3, 12, dtype=torch.float16), torch.empty(0, 12, dtype=torch.float16),
              torch.empty(5, 12, dtype=torch.float16)]
        out = torch.ops.graft.gather_linear(xs, torch.empty(7, 12, dtype=torch.float16), None, "relu")
    assert out.shape == (8, 7) and out.dtype == torch.float16


def test_opcheck():
    xs, weight, bias = make([2, 0, 3], 16, 16)
    # every default test, test_aot_dispatch_dynamic included (a few seconds under the interpreter)
    torch.library.opcheck(torch.ops.graft.gather_linear, (xs, weight, bias, "gelu"))
    torch.library.opcheck(torch.ops.graft.gather_linear, (xs, weight, None, "none"))
    assert torch.Tag.cudagraph_unsafe in torch.ops.graft.gather_linear.default.tags  # host-built table per call


def test_flop_counter():
    xs, weight, bias = make([2, 0, 3], 16, 9)
    with FlopCounterMode(display=False) as counter:
        gather_linear(xs, weight, bias)
    assert counter.get_total_flops() == 2 * 5 * 16 * 9


def test_torch_compile(launches):
    xs, weight, bias = make([4, 1, 6], 16, 20)

    def fn(a, b, c, w, bias):
        return gather_linear([a, b, c], w, bias, "relu") * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*xs, weight, bias), fn(*xs, weight, bias))
    assert launches


def bad_arguments():
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    return [
        (([], w, None, "none"), "non-empty list"),
        (([x], w[0], None, "none"), "weight must be"),
        (([x, x[:, :3]], w, None, "none"), r"xs\[1\] must be \[m, K\] with K = 8"),
        (([x[0]], w, None, "none"), r"xs\[0\] must be"),
        (([x], w, torch.zeros(4), "none"), r"bias must be \[N\] = \[5\]"),
        (([x, x.half()], w, None, "none"), "one dtype"),
        (([x.double()], w.double(), None, "none"), "one dtype"),
        (([x.to("meta")], w, None, "none"), "one device"),
    ]


@pytest.mark.parametrize("case", range(len(bad_arguments())))
def test_bad_inputs(case):
    args, message = bad_arguments()[case]
    with pytest.raises(GraftError, match=message):
        gather_linear(*args)
    with pytest.raises(GraftError, match=message):  # the op checks too, not only the public function
        torch.ops.graft.gather_linear(*args)


def test_unknown_activation():
    with pytest.raises(ValueError, match="expected one of none, relu, gelu"):
        gather_linear([torch.randn(2, 4)], torch.randn(3, 4), None, "tanh")


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter runs on the CPU")
def test_bfloat16_under_the_interpreter_runs_the_reference(launches):
    xs, weight, bias = make([3, 2], 16, 8, torch.bfloat16)
    torch.testing.assert_close(gather_linear(xs, weight, bias), gather_linear_reference(xs, weight, bias))
    assert not launches


def test_reference_without_triton(monkeypatch):
    """Where Triton cannot run, the op is the reference."""
    monkeypatch.setattr(module, "use_triton", lambda *tensors, dot=False: False)
    monkeypatch.setattr(module, "_launch", None)
    xs, weight, bias = make([2, 3], 8, 4)
    torch.testing.assert_close(gather_linear(xs, weight, bias), gather_linear_reference(xs, weight, bias))

