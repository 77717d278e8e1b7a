"""graft::segment_matmul against its definition, computed per segment in float64.

The kernel tests run the Triton kernel: on CUDA, or on the CPU in Triton's interpreter (which
tests/conftest.py switches on where there is no GPU, before the kernels are defined); they fail if
the op falls back to its reference. bf16 runs on GPU only (the interpreter's bf16 ``tl.dot`` is
wrong). The rest (reference, schema, fake, compile, export, FLOPs, bad input) runs on whichever
implementation the op picks.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from graft_fx import GraftError
from graft_fx.kernels import segment_matmul as sm
from graft_fx.kernels.dispatch import ACTIVATIONS, activate, use_triton
from graft_fx.kernels.segment_matmul import segment_matmul

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(not use_triton(torch.empty(0, device=DEVICE)),
                                  reason="needs Triton: CUDA, or its interpreter on the CPU")

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(DEVICE != "cuda", reason="bf16 on GPU only"))]


def expected(x, weight, sizes, bias=None, activation="none"):
    """The definition, segment by segment in float64, cast to x's dtype."""
    outs, start = [], 0
    for g, rows in enumerate(sizes):
        y = x[start:start + rows].double() @ weight[g].double()
        if bias is not None:
            y = y + bias[g].double()
        outs.append(activate(y, activation))
        start += rows
    return torch.cat(outs).to(x.dtype) if outs else x.new_empty((0, weight.shape[2]))


def operands(sizes, k, n, dtype=torch.float32, bias=True, layout="kn", device=DEVICE, seed=0):
    """x [sum(sizes), k] and weight [G, k, n] with outputs of order one; ``layout="nk"`` makes the
    weight as stacked nn.Linear weights give it, ``[G, n, k]`` transposed (not contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    groups = len(sizes)
    x = torch.randn(sum(sizes), k, generator=gen)
    if layout == "kn":
        w = torch.randn(groups, k, n, generator=gen)
    else:
        w = torch.randn(groups, n, k, generator=gen).transpose(1, 2)
    w = w / max(k, 1) ** 0.5
    b = torch.randn(groups, n, generator=gen) if bias else None
    x, w = x.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)  # .to keeps strides
    return x, w, b if b is None else b.to(device=device, dtype=dtype)


def check(out, x, weight, sizes, bias=None, activation="none"):
    tol = TOLERANCE[x.dtype]
    assert out.shape == (x.shape[0], weight.shape[2]) and out.dtype == x.dtype and out.device == x.device
    torch.testing.assert_close(out, expected(x, weight, sizes, bias, activation), atol=tol, rtol=tol)


@pytest.fixture
def kernel_only(monkeypatch):
    """Fail the test if the op falls back to its torch reference."""
    def refuse(*args, **kwargs):
        raise AssertionError("segment_matmul ran its reference where the kernel should run")
    monkeypatch.setattr(sm, "segment_matmul_reference", refuse)


# --- the kernel -----------------------------------------------------------------------------

@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", [[5], [3, 0, 17, 1], [0, 0, 2], [130, 2]], ids=str)
def test_kernel_matches_definition(kernel_only, dtype, activation, bias, sizes):
    # K and N not multiples of any block; [130, 2] spans two row tiles of 128
    x, w, b = operands(sizes, 40, 50, dtype, bias)
    check(segment_matmul(x, w, sizes, b, activation), x, w, sizes, b, activation)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, n", [(64, 32), (33, 7), (16, 300)])
def test_kernel_transposed_weight(kernel_only, dtype, k, n):
    """Stacked nn.Linear weights, [G, N, K] seen as [G, K, N]: strides taken as they are."""
    sizes = [4, 9, 1]
    x, w, b = operands(sizes, k, n, dtype, layout="nk")
    assert not w.is_contiguous()
    check(segment_matmul(x, w, sizes, b, "gelu"), x, w, sizes, b, "gelu")


@needs_kernel
def test_kernel_strided_inputs(kernel_only):
    """x a column slice of a wider tensor, x transposed, bias a transposed [N, G]: no copies needed."""
    sizes = [6, 0, 11]
    x, w, _ = operands(sizes, 24, 20)
    wide = torch.randn(x.shape[0], 48, device=DEVICE)
    x_cols = wide[:, ::2]
    x_t = x.t().contiguous().t()
    bias_t = torch.randn(20, 3, device=DEVICE).t()
    for xs in (x_cols, x_t):
        assert not xs.is_contiguous()
        check(segment_matmul(xs, w, sizes, bias_t, "relu"), xs, w, sizes, bias_t, "relu")


@pytest.mark.parametrize("sizes, k, n", [([0, 0], 8, 16), ([3, 2], 8, 0), ([3, 2], 0, 16)], ids=str)
def test_degenerate_shapes(sizes, k, n):
    """No rows, no columns (nothing to launch), or K = 0 (act(bias); x and the weight may have no
    storage for the kernel to point at, so the reference serves)."""
    x, w, b = operands(sizes, k, n)
    check(segment_matmul(x, w, sizes, b, "gelu"), x, w, sizes, b, "gelu")


@needs_kernel
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5), k=st.integers(1, 48), n=st.integers(1, 48),
       activation=st.sampled_from(ACTIVATIONS), bias=st.booleans(), layout=st.sampled_from(["kn", "nk"]))
def test_kernel_random_segments(sizes, k, n, activation, bias, layout):
    """Any split into segments (empty ones too), any K and N down to 1: the kernel path itself."""
    x, w, b = operands(sizes, k, n, bias=bias, layout=layout)
    check(sm._launch(x, w, sizes, b, activation), x, w, sizes, b, activation)


@needs_kernel
def test_kernel_repeated_sizes_reuse_offsets(kernel_only):
    """The offsets table is cached per (sizes, device); a different split of the same rows is not
    served the old one."""
    x, w, b = operands([5, 5], 16, 16)
    for sizes in ([5, 5], [2, 8], [5, 5]):
        check(segment_matmul(x, w, sizes, b), x, w, sizes, b)


# --- the op, whichever implementation runs ------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_matches_definition(activation):
    sizes = [4, 0, 7]
    x, w, b = operands(sizes, 12, 10, layout="nk", device="cpu")
    check(sm.segment_matmul_reference(x, w, sizes, b, activation), x, w, sizes, b, activation)
    check(sm.segment_matmul_reference(x, w, sizes, None, activation), x, w, sizes, None, activation)


def test_opcheck():
    """Schema, fake implementation and dynamic-shape AOT dispatch agree with the real one."""
    sizes = [3, 0, 5]
    x, w, b = operands(sizes, 16, 24)
    torch.library.opcheck(torch.ops.graft.segment_matmul.default, (x, w, sizes, b, "relu"))
    torch.library.opcheck(torch.ops.graft.segment_matmul.default, (x, w, sizes))


def test_schema():
    schema = str(torch.ops.graft.segment_matmul.default._schema)
    assert "SymInt[] sizes" in schema and "Tensor? bias=None" in schema and 'str activation="none"' in schema


def test_compiles_with_dynamic_sizes():
    """torch.compile traces the op through its fake implementation with symbolic segment sizes."""
    def f(a, c, weight, bias):
        return segment_matmul(torch.cat([a, c]), weight, [a.shape[0], c.shape[0]], bias, "gelu")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=True)
    for rows in ((3, 5), (1, 9)):
        x, w, b = operands(list(rows), 16, 8)
        a, c = x.split(list(rows))
        torch.testing.assert_close(compiled(a, c, w, b), f(a, c, w, b))


def test_exports_with_symbolic_batch():
    """In an exported graph (the realigned graph's own form) the sizes are the fragments' symbolic
    batch sizes and the op's node keeps them."""
    class Two(torch.nn.Module):
        def __init__(self, weight, bias):
            super().__init__()
            self.weight, self.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)

        def forward(self, a, c):
            return segment_matmul(torch.cat([a, c]), self.weight, [a.shape[0], c.shape[0]], self.bias)

    x, w, b = operands([3, 5], 16, 8)
    a, c = x.split([3, 5])
    batch_a, batch_c = torch.export.Dim("batch_a"), torch.export.Dim("batch_c")
    ep = torch.export.export(Two(w, b), (a, c), dynamic_shapes=({0: batch_a}, {0: batch_c}))
    assert any(n.target is torch.ops.graft.segment_matmul.default for n in ep.graph.nodes)
    a2, c2 = torch.randn(7, 16, device=DEVICE), torch.randn(2, 16, device=DEVICE)
    torch.testing.assert_close(ep.module()(a2, c2), expected(torch.cat([a2, c2]), w, [7, 2], b), atol=1e-4, rtol=1e-4)


def test_flop_count():
    sizes = [3, 0, 5]
    x, w, b = operands(sizes, 16, 24)
    with FlopCounterMode(display=False) as counter:
        segment_matmul(x, w, sizes, b, "relu")
    assert counter.get_total_flops() == 2 * 8 * 16 * 24


@pytest.mark.parametrize("change, message", [
    ({"sizes": [3, 4]}, "sum to"),
    ({"sizes": [9, -1]}, "non-negative"),
    ({"sizes": [8]}, "1 sizes for 2"),
    ({"bias": torch.zeros(2, 7)}, "bias must be"),
    ({"x": torch.zeros(8, 15)}, "K=15"),
    ({"x": torch.zeros(8, 16, 1)}, "must be \\[M, K\\]"),
    ({"x": torch.zeros(8, 16, dtype=torch.float64)}, "one dtype"),
    ({"bias": torch.zeros(2, 24, dtype=torch.float16)}, "one dtype"),
])
def test_bad_input(change, message):
    args = {"x": torch.zeros(8, 16), "weight": torch.zeros(2, 16, 24), "sizes": [3, 5], "bias": torch.zeros(2, 24)}
    args.update(change)
    with pytest.raises(GraftError, match=message):
        segment_matmul(**args)


def test_unknown_activation():
    with pytest.raises(ValueError, match="expected one of none, relu, gelu"):
        segment_matmul(torch.zeros(2, 4), torch.zeros(1, 4, 4), [2], activation="tanh")
