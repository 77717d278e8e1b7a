"""``graft::segment_matmul``: one launch for G Linear layers that differ only in their weights.

    out[o_g : o_g + sizes[g]] = act(x[o_g : o_g + sizes[g]] @ weight[g] + bias[g]),  o_g = sum(sizes[:g])

``x`` is [M, K] with its rows in G contiguous segments of ``sizes`` rows (a segment may be empty),
``weight`` is [G, K, N] (the segments' weights stacked), ``bias`` [G, N] or None, and the
activation (`dispatch.ACTIVATIONS`) runs after the bias. A realigned graph uses it where k
fine-tuned copies of one model meet the same Linear with different weights (NetFuse): each
fragment's rows are one segment, each fragment's batch size that segment's size.

The kernel follows the multi-LoRA SGMV pattern (Punica, vLLM): stacked weights indexed by the
segment, per-segment row offsets instead of pointer arrays. Program ``(m, n, g)`` of the grid
``(cdiv(max(sizes), BLOCK_M), cdiv(N, BLOCK_N), G)`` computes the ``BLOCK_M x BLOCK_N`` tile at rows
``o_g + m * BLOCK_M`` and columns ``n * BLOCK_N`` of segment ``g``, masked to the segment, and exits at
once when the segment has no rows there. The offsets live in a small int64 tensor on ``x``'s
device, built from the Python ints (cached per sizes and device; a miss copies from pinned memory
without waiting for the device). The product accumulates in fp32 over K in ``BLOCK_K`` steps with
``tl.dot``; bias and activation are ``tl.constexpr`` switches in the epilogue (GELU in its exact
erf form), and the tile is cast to ``x``'s dtype once, at the store. fp32 inputs use IEEE products
unless ``torch.set_float32_matmul_precision`` allows TF32, as torch's own matmul does.

``BLOCK_M`` follows the largest segment (16 to 128 rows: the tiles of a few-row segment are mostly
mask); on CUDA ``BLOCK_N``, ``BLOCK_K``, warps and stages are autotuned over a few configs keyed on
``(N, K, BLOCK_M)``, under Triton's interpreter one config serves. Any strides of ``x``, ``weight``
and ``bias`` are taken as they come (stacked ``nn.Linear`` weights are ``[G, N, K]`` transposed);
nothing is copied to make them contiguous.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from ..errors import GraftError
from .dispatch import HAS_TRITON, activate, activation_code, check_tensors, inference_only, interpreting, use_triton

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The dtypes the op takes; ``x``, ``weight`` and ``bias`` share one."""


if HAS_TRITON:
    import triton
    import triton.language as tl

    def _configs() -> list[triton.Config]:
        """Autotuning candidates on CUDA (small tiles for few rows and narrow layers, wider for
        more); one config under the interpreter, whose autotuner accepts no more."""
        if interpreting():
            return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
        return [
            triton.Config({"BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=4),
            triton.Config({"BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
            triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=3),
            triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
            triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_N": 256, "BLOCK_K": 32}, num_warps=8, num_stages=3),
        ]

    @triton.autotune(configs=_configs(), key=["N", "K", "BLOCK_M"])
    @triton.jit
    def _segment_matmul_kernel(
        x_ptr, w_ptr, b_ptr, out_ptr, offsets_ptr, N, K,
        stride_xm, stride_xk, stride_wg, stride_wk, stride_wn, stride_bg, stride_bn, stride_om, stride_on,
        HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_m, pid_n, g = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        start = tl.load(offsets_ptr + g)
        rows = tl.load(offsets_ptr + g + 1) - start
        if pid_m * BLOCK_M >= rows:
            return
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m, mask_n = offs_m < rows, offs_n < N
        x_ptrs = x_ptr + (start + offs_m)[:, None] * stride_xm + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + g * stride_wg + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            mask_k = offs_k < K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        if HAS_BIAS:
            bias = tl.load(b_ptr + g * stride_bg + offs_n * stride_bn, mask=mask_n, other=0.0)
            acc += bias.to(tl.float32)[None, :]
        if ACTIVATION == 1:
            acc = tl.maximum(acc, 0.0)
        elif ACTIVATION == 2:
            acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
        out_ptrs = out_ptr + (start + offs_m)[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def block_m(max_rows: int) -> int:
    """``BLOCK_M`` for a largest segment of ``max_rows`` rows: the power of two that holds it,
    within 16 (``tl.dot``'s smallest tile on compiled Triton) and 128."""
    return min(128, max(16, 1 << (max_rows - 1).bit_length()))


@functools.lru_cache(maxsize=256)
def _offsets(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The segments' row offsets ``[0, s0, s0 + s1, ..., M]`` as an int64 tensor on ``device``.
    Cached, since a server sees the same batch-size combinations over and over; never written to.
    On CUDA the copy leaves from pinned memory without waiting for the device."""
    table = torch.tensor([0, *sizes], dtype=torch.int64).cumsum_(0)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


def _check(x: torch.Tensor, weight: torch.Tensor, sizes: list[int], bias: torch.Tensor | None,
           activation: str) -> None:
    """GraftError naming what is wrong with the op's arguments (sizes may be symbolic)."""
    activation_code(activation)
    if x.dim() != 2 or weight.dim() != 3:
        raise GraftError(f"segment_matmul: x must be [M, K] and weight [G, K, N], got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    groups, n = weight.shape[0], weight.shape[2]
    if weight.shape[1] != x.shape[1]:
        raise GraftError(f"segment_matmul: x has K={x.shape[1]} columns but weight is {tuple(weight.shape)}")
    if len(sizes) != groups:
        raise GraftError(f"segment_matmul: {len(sizes)} sizes for {groups} stacked weights")
    if any(s < 0 for s in sizes) or sum(sizes) != x.shape[0]:
        raise GraftError(f"segment_matmul: sizes {list(sizes)} must be non-negative and sum to x's "
                         f"{x.shape[0]} rows")
    if bias is not None and tuple(bias.shape) != (groups, n):
        raise GraftError(f"segment_matmul: bias must be [G, N] = [{groups}, {n}], got {tuple(bias.shape)}")
    check_tensors("segment_matmul", "x, weight and bias", [x, weight] + ([bias] if bias is not None else []), DTYPES)


def segment_matmul_reference(x: torch.Tensor, weight: torch.Tensor, sizes: list[int],
                             bias: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """The op in plain torch: one ``addmm`` (or ``mm``) per segment, the outputs concatenated,
    then the activation; segments of equal, non-zero size run as one ``baddbmm`` (``bmm``).
    Runs wherever Triton cannot."""
    if len(set(sizes)) == 1 and sizes[0] > 0:
        stacked = x.reshape(len(sizes), sizes[0], x.shape[1])
        out = torch.bmm(stacked, weight) if bias is None else torch.baddbmm(bias[:, None, :], stacked, weight)
        return activate(out.reshape(x.shape[0], weight.shape[2]), activation)
    outs, start = [], 0
    for g, rows in enumerate(sizes):
        if rows == 0:  # an empty segment adds no rows (a fragment absent from this call)
            continue
        x_g = x[start:start + rows]
        outs.append(x_g @ weight[g] if bias is None else torch.addmm(bias[g], x_g, weight[g]))
        start += rows
    out = torch.cat(outs) if outs else x.new_empty((0, weight.shape[2]))
    return activate(out, activation)


def _launch(x: torch.Tensor, weight: torch.Tensor, sizes: list[int], bias: torch.Tensor | None,
            activation: str) -> torch.Tensor:
    """Run the Triton kernel: one program per (row tile, column tile, segment)."""
    (m, k), n = x.shape, weight.shape[2]
    out = x.new_empty((m, n))
    if m == 0 or n == 0:
        return out
    if k == 0:  # nothing to multiply, and x and weight may have no storage to point the kernel at
        return segment_matmul_reference(x, weight, sizes, bias, activation)
    max_rows = max(sizes)
    bm = block_m(max_rows)

    def grid(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(max_rows, bm), triton.cdiv(n, meta["BLOCK_N"]), len(sizes)

    ieee = x.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    b_strides = bias.stride() if bias is not None else (0, 0)
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:
        _segment_matmul_kernel[grid](
            x, weight, bias if bias is not None else x, out, _offsets(tuple(sizes), x.device), n, k,
            *x.stride(), *weight.stride(), *b_strides, *out.stride(),
            HAS_BIAS=bias is not None, ACTIVATION=activation_code(activation),
            PRECISION="ieee" if ieee else "tf32", BLOCK_M=bm,
        )
    return out


@torch.library.custom_op("graft::segment_matmul", mutates_args=())
def _segment_matmul_op(x: torch.Tensor, weight: torch.Tensor, sizes: list[int], bias: torch.Tensor | None = None,
                       activation: str = "none") -> torch.Tensor:
    _check(x, weight, sizes, bias, activation)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if use_triton(*tensors, dot=True):
        return _launch(x, weight, sizes, bias, activation)
    return segment_matmul_reference(x, weight, sizes, bias, activation)


@_segment_matmul_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, sizes: list[int], bias: torch.Tensor | None = None,
      activation: str = "none") -> torch.Tensor:
    _check(x, weight, sizes, bias, activation)
    return x.new_empty((x.shape[0], weight.shape[2]))


inference_only(_segment_matmul_op, "segment_matmul")  # no backward formula: a backward raises


@register_flop_formula(torch.ops.graft.segment_matmul)
def _flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """2 FLOPs per multiply-add, as ``torch.utils.flop_counter`` counts ``mm`` (bias and
    activation uncounted, as for ``addmm``): every row of x meets one K x N weight."""
    return 2 * x_shape[0] * x_shape[1] * weight_shape[2]


def segment_matmul(x: torch.Tensor, weight: torch.Tensor, sizes: Sequence[int], bias: torch.Tensor | None = None,
                   activation: str = "none") -> torch.Tensor:
    """``act(x[o_g : o_g + sizes[g]] @ weight[g] + bias[g])`` for every segment ``g``, in one launch.

    Args:
        x: ``[M, K]``, float32, float16 or bfloat16, any strides.
        weight: ``[G, K, N]``, x's dtype and device, any strides (stacked ``nn.Linear`` weights
            ``[G, N, K]`` pass as ``.transpose(1, 2)``, uncopied).
        sizes: G ints >= 0 summing to M (SymInts when traced): segment g is x's next sizes[g] rows.
        bias: ``[G, N]`` or None.
        activation: one of `dispatch.ACTIVATIONS` (``"none"``, ``"relu"``, ``"gelu"``: exact).

    Returns:
        ``[M, N]`` in x's dtype, each segment's rows where its input rows were.

    Raises:
        GraftError: wrong ranks or inner sizes, sizes that do not match G or M, a bias not
            ``[G, N]``, mixed or unsupported dtypes, mixed devices.
        ValueError: an unknown activation.

    Runs the Triton kernel on CUDA (or on the CPU under ``TRITON_INTERPRET=1`` set before import),
    else `segment_matmul_reference` (`dispatch.use_triton`).
    """
    return torch.ops.graft.segment_matmul(x, weight, list(sizes), bias, activation)
