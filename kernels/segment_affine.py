"""``graft::segment_affine``: rows in contiguous segments, each scaled and shifted by its own parameters.

    out[o_g : o_g + sizes[g]] = (x[o_g : o_g + sizes[g]] - center[g]) * scale[g] + shift[g],  o_g = sum(sizes[:g])

``x`` is ``[M, *row]`` (float32, float16 or bfloat16) with its rows in G contiguous segments of
``sizes`` rows (a segment may be empty); ``scale`` and ``shift`` are ``[G, *b]`` in x's dtype,
where ``b`` broadcasts against ``row`` (``[C, 1, 1]`` per channel of an image, ``[D]`` per feature
of a token); ``center`` and ``shift`` may be None (zero). A realigned graph uses it where
fine-tuned copies meet an eval-mode batch norm (``center = running_mean``, ``scale = weight /
sqrt(running_var + eps)``, ``shift = bias``: centred first, as the CUDA kernel computes it, since
folding the mean into the shift cancels digits when the mean is large against the spread of x)
or the affine part of a layer norm with different parameters (``share="structure"``): one pass
over all rows instead of one normalisation per copy.

No Triton kernel: the op gathers each row's parameters by its segment (``[M, *b]``, as small as
the parameters times the rows) and runs one fused ``addcmul``, a single pass over ``x`` on any
device; a kernel could save only the small gather. The per-row segment index is built from the
Python ints of ``sizes`` (one small host-to-device copy, no synchronisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from ..errors import GraftError
from .dispatch import check_tensors, inference_only

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, sizes: Sequence[int],
           center: torch.Tensor | None = None) -> None:
    """GraftError naming what is wrong with the op's arguments (sizes may be symbolic)."""
    if x.dim() < 1 or scale.dim() != x.dim():
        raise GraftError(f"segment_affine: x must be [M, *row] and scale [G, *b] of the same rank, got "
                         f"{tuple(x.shape)} and {tuple(scale.shape)}")
    if any(b not in (1, r) for b, r in zip(scale.shape[1:], x.shape[1:])):
        raise GraftError(f"segment_affine: scale's {tuple(scale.shape[1:])} does not broadcast against x's rows "
                         f"{tuple(x.shape[1:])}")
    for name, t in (("shift", shift), ("center", center)):
        if t is not None and t.shape != scale.shape:
            raise GraftError(f"segment_affine: {name} must be shaped like scale {tuple(scale.shape)}, got "
                             f"{tuple(t.shape)}")
    if len(sizes) != scale.shape[0]:
        raise GraftError(f"segment_affine: {len(sizes)} sizes for {scale.shape[0]} segments of parameters")
    if any(s < 0 for s in sizes) or sum(sizes) != x.shape[0]:
        raise GraftError(f"segment_affine: sizes {list(sizes)} must be non-negative and sum to x's {x.shape[0]} rows")
    check_tensors("segment_affine", "x, scale, shift and center", [x, scale] + [t for t in (shift, center) if t is not None],
                  DTYPES)


def segment_affine_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None,
                             sizes: Sequence[int], center: torch.Tensor | None = None) -> torch.Tensor:
    """The op in plain torch, segment by segment (the specification the op is tested against)."""
    outs, start = [], 0
    for g, rows in enumerate(sizes):
        x_g = x[start:start + rows] if center is None else x[start:start + rows] - center[g]
        outs.append(x_g * scale[g] if shift is None else torch.addcmul(shift[g], x_g, scale[g]))
        start += rows
    return torch.cat(outs) if outs else x.clone()


def _segments(sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    """Each row's segment index, ``[M]`` int64 on ``device``."""
    counts = torch.tensor(list(sizes), dtype=torch.int64).to(device, non_blocking=True)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), counts, output_size=sum(sizes))


@torch.library.custom_op("graft::segment_affine", mutates_args=())
def _segment_affine_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, sizes: list[int],
                       center: torch.Tensor | None = None) -> torch.Tensor:
    _check(x, scale, shift, sizes, center)
    rows = _segments(sizes, x.device)
    if center is not None:
        x = x - center[rows]
    return x * scale[rows] if shift is None else torch.addcmul(shift[rows], x, scale[rows])


@_segment_affine_op.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, sizes: list[int],
      center: torch.Tensor | None = None) -> torch.Tensor:
    _check(x, scale, shift, sizes, center)
    return torch.empty_like(x)


inference_only(_segment_affine_op, "segment_affine")  # no backward formula: a backward raises


@register_flop_formula(torch.ops.graft.segment_affine)
def _flops(x_shape, *args, **kwargs) -> int:
    """A multiply and an add per element of x."""
    n = 1
    for d in x_shape:
        n *= d
    return 2 * n


def segment_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, sizes: Sequence[int],
                   center: torch.Tensor | None = None) -> torch.Tensor:
    """``(x[rows of g] - center[g]) * scale[g] + shift[g]`` for every segment ``g``, in one pass.

    Args:
        x: ``[M, *row]``, float32, float16 or bfloat16.
        scale: ``[G, *b]``, x's dtype and device, ``b`` broadcasting against ``row``.
        shift: shaped like ``scale``, or None.
        center: shaped like ``scale``, or None.
        sizes: G ints >= 0 summing to M (SymInts when traced).

    Returns:
        A new tensor shaped like x, in x's dtype.

    Raises:
        GraftError: ranks or shapes that do not broadcast, sizes that do not match G or M, mixed or
            unsupported dtypes, mixed devices.
    """
    return torch.ops.graft.segment_affine(x, scale, shift, list(sizes), center)
