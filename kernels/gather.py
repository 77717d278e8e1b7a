"""``graft::gather``: the rows of several tensors copied into one new tensor in one kernel launch.

What it computes: for G >= 1 tensors ``xs[i]`` of shape ``[m_i, *row]`` (any ``m_i >= 0``, one
trailing shape ``row``, one dtype, one device) the tensor ``torch.cat(xs, dim=0)`` of shape
``[sum(m_i), *row]``, same dtype and device, contiguous. Every dtype ``torch.cat`` takes works
(floating, integer, bool, complex): a copy only moves bits, and the result is bit-exact.

Why: at the junctions of a realigned graph the rows of several fragments meet before a shared
layer runs on all of them at once. Those fragments' rows are often narrow views (``x[a:b]``) of
other tensors, and there are often many of them with few rows each. ``torch.cat`` pays per input
(one copy per input on the CPU; on CUDA a batched cat kernel with a per-call setup), and this op
copies every input in a single launch. It is used only where it was measured faster: the lowering
decides (``benchmarks/bench_gather.py`` shows where).

Algorithm: the launcher builds one int64 table of three rows of G entries, copied to the device
in one transfer: each input's ``data_ptr()``, the element offset of its rows in the output, and
its element count. The grid is ``(G, P)``: program ``(i, j)`` loads input i's pointer from the
table, casts it to a pointer of the output's element type (``.to(tl.pointer_type(...))``), and
copies blocks ``j, j + P, j + 2P, ...`` of ``BLOCK`` elements of input i with masked, vectorised
loads and stores (the last block of each input is partial). ``P = min(cdiv(max_i n_i, BLOCK),
MAX_PROGRAMS)``: programs of small inputs past their end return at once, and a large input is
walked by at most ``MAX_PROGRAMS`` programs in a strided loop, so the grid stays within CUDA's
limits for any size. The kernel copies words, not values: each tensor is read as the
integer type of its element width (``uint8`` for 1-byte types such as bool, ``int16``,
``int32``, ``int64``; 16-byte complex128 as two int64), so four specialisations serve every
dtype and no value is converted (NaN payloads survive; bf16 and fp8 need no float support).
``BLOCK`` is ``BLOCK_BYTES`` (4 KiB) of words, whatever their width.

Inputs must be contiguous: the kernel reads ``n_i`` consecutive elements from each pointer. A
narrow view along dim 0 of a contiguous tensor is contiguous and is read in place; any other
input (a transposed or strided view) is first made contiguous by the launcher (one extra copy of
that input). The output is always contiguous (``torch.cat`` may keep a channels-last layout;
the values are the same). The raw pointers in the table are valid while the inputs are alive,
which the caller ensures for the duration of the call; kernels after it on the same stream see
the finished output.

Sources: the pointer-array ("grouped") pattern of Triton's grouped GEMM tutorial, where a table
of ``data_ptr()`` values is loaded and cast to typed pointers inside the kernel; PyTorch's CUDA
``CatArrayBatchedCopy`` kernel (a batch of inputs described by a table of pointers, offsets and
sizes, copied by one launch) for the table layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from graft_fx.errors import GraftError
from graft_fx.kernels.dispatch import HAS_TRITON, use_triton

BLOCK_BYTES = 4096
"""Bytes one program copies per loop iteration (``BLOCK`` = this many bytes of words)."""
MAX_PROGRAMS = 1024
"""At most this many programs per input (grid axis 1); larger inputs are walked in a loop."""
_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _gather_kernel(out_ptr, table_ptr, G, BLOCK: tl.constexpr):
        """Copy input ``program_id(0)``'s words into ``out_ptr`` at its offset, blocks
        ``program_id(1)``, ``+ num_programs(1)``, ... (``table_ptr``: pointers, offsets, counts)."""
        i = tl.program_id(0)
        src = tl.load(table_ptr + i).to(tl.pointer_type(out_ptr.dtype.element_ty))
        dst = out_ptr + tl.load(table_ptr + G + i)
        n = tl.load(table_ptr + 2 * G + i)
        first = tl.program_id(1).to(tl.int64) * BLOCK
        step = tl.num_programs(1).to(tl.int64) * BLOCK
        for start in range(first, n, step):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


def _check(xs: Sequence[torch.Tensor]) -> None:
    """GraftError unless ``xs`` is a non-empty sequence of tensors of at least one dimension
    with one trailing shape, one dtype and one device. One pass, the first tensor's attributes
    read once: it runs on every call (a few µs per 16 inputs)."""
    if isinstance(xs, torch.Tensor) or not isinstance(xs, Sequence):
        raise GraftError(f"gather: expected a list of tensors, got {type(xs).__name__}")
    if not xs:
        raise GraftError("gather: expected at least one tensor, got an empty list")
    first = xs[0]
    row, dtype, device = (first.shape[1:], first.dtype, first.device) if isinstance(first, torch.Tensor) else (None,) * 3
    for i, x in enumerate(xs):
        if not isinstance(x, torch.Tensor):
            raise GraftError(f"gather: xs[{i}] is a {type(x).__name__}, expected a tensor")
        if x.dim() == 0:
            raise GraftError(f"gather: xs[{i}] is zero-dimensional, expected shape [rows, *row]")
        if x.shape[1:] != row:
            raise GraftError(f"gather: xs[{i}] has rows of shape {list(x.shape[1:])}, expected {list(row)} "
                             f"like xs[0] (shapes {list(x.shape)} and {list(first.shape)})")
        if x.dtype != dtype:
            raise GraftError(f"gather: xs[{i}] has dtype {x.dtype}, expected {dtype} like xs[0]")
        if x.device != device:
            raise GraftError(f"gather: xs[{i}] is on {x.device}, expected {device} like xs[0]")


def gather_reference(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The semantics of `gather` in plain torch: ``torch.cat(xs, dim=0)`` of G >= 1 tensors of
    shape ``[m_i, *row]`` (one row shape, dtype and device) -> ``[sum(m_i), *row]``, a new tensor.
    Raises GraftError on inputs `gather` rejects."""
    _check(xs)
    return torch.cat(list(xs), dim=0)


def gather_triton(xs: Sequence[torch.Tensor], *, block_bytes: int = BLOCK_BYTES,
                  max_programs: int = MAX_PROGRAMS) -> torch.Tensor:
    """`gather` by the Triton kernel, one launch (none when the output is empty). ``xs`` as in
    `gather`, checked by the caller; non-contiguous inputs are copied to contiguous ones first.
    ``block_bytes`` (a power of two, at least 16) and ``max_programs`` set the tiling (module
    docstring); the defaults suit a GPU, the tests shrink them to reach every branch."""
    xs = [x.contiguous() for x in xs]
    first = xs[0]
    out = torch.empty((sum(x.shape[0] for x in xs), *first.shape[1:]), dtype=first.dtype, device=first.device)
    if out.numel() == 0:
        return out
    word = _WORDS[min(out.element_size(), 8)]
    scale = out.element_size() // word.itemsize
    counts = [x.numel() * scale for x in xs]
    offsets = [0]
    for n in counts[:-1]:
        offsets.append(offsets[-1] + n)
    table = torch.tensor([x.data_ptr() for x in xs] + offsets + counts, dtype=torch.int64).to(out.device)
    block = block_bytes // word.itemsize
    grid = (len(xs), min(triton.cdiv(max(counts), block), max_programs))
    _gather_kernel[grid](out.view(-1).view(word), table, len(xs), BLOCK=block)
    return out


@torch.library.custom_op("graft::gather", mutates_args=())
def _gather(xs: list[torch.Tensor]) -> torch.Tensor:
    _check(xs)
    if use_triton(*xs):
        return gather_triton(xs)
    return gather_reference(xs)


@_gather.register_fake
def _(xs: list[torch.Tensor]) -> torch.Tensor:
    _check(xs)
    first = xs[0]
    return first.new_empty((sum(x.shape[0] for x in xs), *first.shape[1:]))


def _setup_context(ctx, inputs, output) -> None:
    ctx.rows = [x.shape[0] for x in inputs[0]]


def _backward(ctx, grad: torch.Tensor):
    return list(grad.split(ctx.rows, dim=0))


_gather.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.graft.gather)
def _gather_flop(xs_shapes, *args, out_shape=None, **kwargs) -> int:
    """A copy does no arithmetic: 0 FLOPs (registered so that FlopCounterMode knows the op)."""
    return 0


def gather(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(xs, dim=0)`` in one kernel launch: G >= 1 tensors of shape ``[m_i, *row]``
    (``m_i >= 0``; one row shape, one dtype - any dtype ``torch.cat`` takes - and one device)
    -> a new contiguous tensor ``[sum(m_i), *row]`` of that dtype on that device, the rows of
    ``xs[0]`` first. Runs the Triton kernel where `dispatch.use_triton` allows, else
    `gather_reference`. Differentiable (the gradient is split back by rows).

    Raises GraftError (a ValueError) for an empty list, a non-tensor, a zero-dimensional tensor,
    or tensors whose row shapes, dtypes or devices differ (``torch.cat`` would promote dtypes;
    this op does not)."""
    _check(xs)
    return torch.ops.graft.gather(list(xs))
