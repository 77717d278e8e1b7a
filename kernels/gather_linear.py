"""Gather linear: one Linear layer over the rows of several tensors, read where they lie.

``gather_linear(xs, weight, bias=None, activation="none")`` computes::

    act(torch.nn.functional.linear(torch.cat(xs), weight, bias))        # [sum m_i, N]

for ``xs`` a list of G >= 1 tensors ``xs[i]: [m_i, K]`` (``m_i >= 0``), ``weight: [N, K]``
(``nn.Linear``'s layout), ``bias: [N]`` or None, and ``act`` one of
`dispatch.ACTIVATIONS` (``none``, ``relu``, exact ``gelu``). Every tensor has one dtype (float32,
float16, or bfloat16: under Triton's interpreter bfloat16 runs the reference, its ``tl.dot`` being
wrong there) and one device. The output has the
inputs' dtype; products accumulate in float32, and the bias and activation are applied in
float32 before the one rounding to the output dtype.

Why: in a realigned graph the rows of several fragments meet at a shared Linear. Without this op
the graph copies them into one tensor with ``torch.cat`` and then calls ``linear``; this op fuses
that gather into the GEMM's operand loads, so the concatenated copy is never written or read.

Algorithm. The launcher builds, on the host, one small int64 table per call and copies it to the
device: one pinned, non-blocking host-to-device copy of ``3 G' + 1`` integers per call (G' the
inputs with rows), a few microseconds of host time and one more stream operation, which matter
for small batches. A CUDA graph would bake the table's host buffer and the inputs' addresses into
its replays, so the op is tagged ``cudagraph_unsafe`` (torch.compile's CUDA graphs run around it)
until it gets a capture-safe variant, which is later work. The table:

* ``table[0:G']`` the inputs' ``data_ptr()``s (a pointer table, as in Punica's SGMV and vLLM's
  multi-LoRA kernels, which keep per-segment pointers or offsets for a segmented GEMM);
* ``table[G':2G'+1]`` the prefix sums of the ``m_i``: input i's rows go to output rows
  ``[table[G'+i], table[G'+i+1])``;
* ``table[2G'+1:3G'+1]`` each input's row stride, in elements.

Inputs of 0 rows are left out of the table (they produce no output rows); with no rows at all,
or N = 0, nothing is launched, and with K = 0 the reference gives ``act(bias)`` rows. The grid is
``(cdiv(max m_i, BLOCK_M), cdiv(N, BLOCK_N), G')``: program ``(m, n, i)`` computes the output
tile of input i's rows ``[m BLOCK_M, (m+1) BLOCK_M)`` (returning at once when input i has fewer
rows) and columns ``[n BLOCK_N, (n+1) BLOCK_N)``. It loads A tiles ``[BLOCK_M, BLOCK_K]`` through
input i's pointer and row stride, B tiles ``[BLOCK_K, BLOCK_N]`` from ``weight`` read as
``[K, N]`` through its strides (no transposed copy), accumulates ``tl.dot`` in float32, adds the
bias and applies the activation (``tl.constexpr`` switches), and stores at input i's row offset.
Each input's rows read the whole weight once, so G inputs read it G times (from L2 when it fits):
for many inputs of very few rows, ``torch.cat`` + one GEMM reads it once, which the benchmark
weighs.

Inputs may be any view whose last dim has stride 1, e.g. ``big.narrow(0, start, rows)`` (what the
realigned graph produces): those are read in place. An input whose last dim is strided (``stride(1)
!= 1`` with K > 1) is made contiguous by the launcher first, a copy of that input alone.
float32 products use TF32 only where torch's own matmuls would
(``torch.get_float32_matmul_precision() != "highest"``), so the kernel and ``F.linear`` agree.

Sources: Punica's SGMV kernel (Chen et al., "Punica: Multi-Tenant LoRA Serving", 2023) and
vLLM's multi-LoRA segmented GEMM (``vllm/lora/ops/triton_ops``) for the per-segment pointer and
offset tables; the Triton matmul tutorial for the tiling.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from graft_fx.errors import GraftError
from graft_fx.kernels.dispatch import HAS_TRITON, activate, activation_code, inference_only, use_triton

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _gather_linear_kernel(table_ptr, w_ptr, b_ptr, out_ptr, N, K, G,
                              stride_wn, stride_wk, stride_om, stride_on,
                              HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        i = tl.program_id(2)
        start = tl.load(table_ptr + G + i)
        rows = tl.load(table_ptr + G + i + 1) - start
        if pid_m * BLOCK_M >= rows:
            return
        x_ptr = tl.load(table_ptr + i).to(tl.pointer_type(w_ptr.dtype.element_ty))
        stride_xm = tl.load(table_ptr + 2 * G + 1 + i)

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
        b_ptrs = w_ptr + rk[:, None] * stride_wk + rn[None, :] * stride_wn
        row_ok = rm[:, None] < rows
        col_ok = rn[None, :] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_ok & (rk[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & col_ok, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K * stride_wk

        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if ACTIVATION == 1:
            acc = tl.maximum(acc, 0.0)
        elif ACTIVATION == 2:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        out_ptrs = out_ptr + (start + rm)[:, None] * stride_om + rn[None, :] * stride_on
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok & col_ok)


def gather_linear_reference(xs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None = None,
                            activation: str = "none") -> torch.Tensor:
    """The op's semantics in plain torch: ``act(F.linear(torch.cat(xs), weight, bias))``.

    Shapes: ``xs[i]: [m_i, K]``, ``weight: [N, K]``, ``bias: [N]`` or None; returns
    ``[sum m_i, N]`` in the inputs' dtype. ``activation`` is one of `dispatch.ACTIVATIONS`.
    """
    return activate(torch.nn.functional.linear(torch.cat(xs), weight, bias), activation)


def check_inputs(xs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> None:
    """Raise GraftError (or ValueError for an unknown activation) naming what is wrong with the
    op's arguments: the list, ranks, the inner size K, the bias's size N, dtypes and devices."""
    activation_code(activation)
    if not isinstance(xs, (list, tuple)) or not xs:
        raise GraftError(f"gather_linear: xs must be a non-empty list of [m_i, K] tensors, got {xs!r}")
    if weight.dim() != 2:
        raise GraftError(f"gather_linear: weight must be [N, K], got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if bias is not None and tuple(bias.shape) != (n,):
        raise GraftError(f"gather_linear: bias must be [N] = [{n}] to match weight {tuple(weight.shape)}, "
                         f"got shape {tuple(bias.shape)}")
    for i, x in enumerate(xs):
        if x.dim() != 2 or x.shape[1] != k:
            raise GraftError(f"gather_linear: xs[{i}] must be [m, K] with K = {k} (weight {tuple(weight.shape)}), "
                             f"got shape {tuple(x.shape)}")
    tensors = [*xs, weight] + ([bias] if bias is not None else [])
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or weight.dtype not in DTYPES:
        raise GraftError(f"gather_linear: xs, weight and bias must share one dtype among "
                         f"{', '.join(map(str, DTYPES))}, got {', '.join(sorted(map(str, dtypes)))}")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise GraftError(f"gather_linear: xs, weight and bias must be on one device, got "
                         f"{', '.join(sorted(map(str, devices)))}")


def _readable(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when the kernel can read it in place (last dim of stride 1, or of size 1:
    any row stride will do), else a contiguous copy."""
    return x if x.stride(1) == 1 or x.shape[1] == 1 else x.contiguous()


def _table(xs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The kernel's int64 table for the inputs ``xs`` (all with rows): pointers, prefix sums of
    rows (one more than inputs), row strides; built on the host, one copy to ``device``."""
    offsets = [0]
    for x in xs:
        offsets.append(offsets[-1] + x.shape[0])
    host = [x.data_ptr() for x in xs] + offsets + [x.stride(0) for x in xs]
    # pinned and non-blocking: a pageable blocking copy would wait for all the stream's queued work
    table = torch.tensor(host, dtype=torch.int64, pin_memory=device.type == "cuda")
    return table.to(device, non_blocking=True)


def _blocks(max_rows: int) -> tuple[int, int, int]:
    """BLOCK_M, BLOCK_N, BLOCK_K: BLOCK_M the power of two >= the largest input's rows, within
    [16, 64]; every tile at least 16, which compiled ``tl.dot`` needs."""
    block_m = min(64, max(16, triton.next_power_of_2(max_rows)))
    return block_m, 64, 64


def _launch(xs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """Run the kernel: the op's result, computed on ``xs``' device without concatenating them."""
    n, k = weight.shape
    out = torch.empty((sum(x.shape[0] for x in xs), n), dtype=weight.dtype, device=weight.device)
    filled = [_readable(x) for x in xs if x.shape[0] > 0]
    if not filled or n == 0:
        return out
    if k == 0:  # nothing to multiply; the weight may not even have storage
        return gather_linear_reference(xs, weight, bias, activation)
    table = _table(filled, weight.device)
    block_m, block_n, block_k = _blocks(max(x.shape[0] for x in filled))
    grid = (triton.cdiv(max(x.shape[0] for x in filled), block_m), triton.cdiv(n, block_n), len(filled))
    precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    _gather_linear_kernel[grid](
        table, weight, bias, out, n, k, len(filled),
        weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, ACTIVATION=activation_code(activation), INPUT_PRECISION=precision,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


@torch.library.custom_op("graft::gather_linear", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def _gather_linear_op(xs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                      activation: str) -> torch.Tensor:
    check_inputs(xs, weight, bias, activation)
    if use_triton(*xs, weight, *([bias] if bias is not None else []), dot=True):
        return _launch(xs, weight, bias, activation)
    return gather_linear_reference(xs, weight, bias, activation)


@_gather_linear_op.register_fake
def _(xs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    check_inputs(xs, weight, bias, activation)
    return weight.new_empty((sum(x.shape[0] for x in xs), weight.shape[0]))


inference_only(_gather_linear_op, "gather_linear")  # no backward formula: a backward raises


@register_flop_formula(torch.ops.graft.gather_linear)
def _gather_linear_flops(xs_shapes, weight_shape, *args, **kwargs) -> int:
    """2 M K N multiply-adds, M = the inputs' rows together (the bias and activation not counted,
    as for ``aten.addmm``)."""
    n, k = weight_shape
    return 2 * sum(shape[0] for shape in xs_shapes) * k * n


def gather_linear(xs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str = "none") -> torch.Tensor:
    """``act(F.linear(torch.cat(xs), weight, bias))`` without the concatenated copy.

    Args:
        xs: G >= 1 tensors ``[m_i, K]`` (``m_i`` may be 0), one dtype (float32, float16, bfloat16)
            and one device; views along dim 0 (``narrow``, slices) are read in place.
        weight: ``[N, K]``, ``nn.Linear.weight``'s layout, any strides.
        bias: ``[N]`` or None.
        activation: one of `dispatch.ACTIVATIONS` (``"none"``, ``"relu"``, ``"gelu"``: exact).

    Returns:
        ``[sum m_i, N]`` in the inputs' dtype: input i's rows at output rows
        ``[m_0 + ... + m_{i-1}, m_0 + ... + m_i)``.

    Raises:
        GraftError: xs empty or not a list, a tensor of the wrong rank or inner size, a bias not
            ``[N]``, mixed or unsupported dtypes, mixed devices.
        ValueError: an unknown activation.

    Runs the Triton kernel on CUDA (or on the CPU under ``TRITON_INTERPRET=1``, bfloat16 excepted),
    else the reference (`dispatch.use_triton`).
    """
    check_inputs(xs, weight, bias, activation)
    return torch.ops.graft.gather_linear(list(xs), weight, bias, activation)
