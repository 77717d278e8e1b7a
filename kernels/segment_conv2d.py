"""``graft::segment_conv2d``: rows in contiguous segments, each convolved with its own weights.

    out[o_g : o_g + sizes[g]] = conv2d(x[o_g : o_g + sizes[g]], weight[g], bias[g], stride, padding, dilation, groups)

``x`` is ``[M, C, H, W]`` (float32, float16 or bfloat16) with its rows in G contiguous segments
of ``sizes`` rows; ``weight`` is ``[G, C_out, C / groups, kh, kw]`` (the segments' weights
stacked), ``bias`` ``[G, C_out]`` or None. A realigned graph uses it where fine-tuned copies of
one model meet the same convolution with different weights (``share="structure"``).

Algorithm: when every segment has the same number of rows ``m`` (a server batching equal shares
of each copy, or one row each), the segments are stacked along the channels, ``[m, G C, H, W]``,
and one grouped convolution with ``G`` times the groups runs them all: the channels of segment
g meet only the weights of segment g (the way NetFuse merges the convolutions of models of one
structure into grouped ones). Otherwise each non-empty segment runs its own
convolution, which is exactly the per-segment form. No Triton kernel: cuDNN's and oneDNN's
grouped convolutions are the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from ..errors import GraftError
from .dispatch import check_tensors, inference_only

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: Sequence[int], groups: int) -> None:
    """GraftError naming what is wrong with the op's arguments (sizes may be symbolic)."""
    if x.dim() != 4 or weight.dim() != 5:
        raise GraftError(f"segment_conv2d: x must be [M, C, H, W] and weight [G, C_out, C / groups, kh, kw], got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.shape[2] * groups != x.shape[1]:
        raise GraftError(f"segment_conv2d: x has {x.shape[1]} channels but weight {tuple(weight.shape)} with "
                         f"groups={groups} takes {weight.shape[2] * groups}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0], weight.shape[1]):
        raise GraftError(f"segment_conv2d: bias must be [G, C_out] = [{weight.shape[0]}, {weight.shape[1]}], got "
                         f"{tuple(bias.shape)}")
    if len(sizes) != weight.shape[0] or any(s < 0 for s in sizes) or sum(sizes) != x.shape[0]:
        raise GraftError(f"segment_conv2d: sizes {list(sizes)} must be {weight.shape[0]} non-negative counts "
                         f"summing to x's {x.shape[0]} rows")
    check_tensors("segment_conv2d", "x, weight and bias", [x, weight] + ([bias] if bias is not None else []), DTYPES)


def segment_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: Sequence[int],
                             stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                             groups: int) -> torch.Tensor:
    """The op in plain torch: one convolution per non-empty segment, the outputs concatenated."""
    outs, start = [], 0
    for g, rows in enumerate(sizes):
        if rows:
            outs.append(F.conv2d(x[start:start + rows], weight[g], None if bias is None else bias[g], stride, padding,
                                 dilation, groups))
        start += rows
    if outs:
        return torch.cat(outs)
    probe = F.conv2d(x[:0], weight[0], None, stride, padding, dilation, groups)  # the empty output's shape
    return probe.new_empty((0, *probe.shape[1:]))


def _stacked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int, stride: Sequence[int],
             padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """Equal segments of ``rows`` rows as one grouped convolution over channel-stacked inputs."""
    g, c_out = weight.shape[:2]
    _, c, h, w = x.shape
    stacked = x.reshape(g, rows, c, h, w).transpose(0, 1).reshape(rows, g * c, h, w)
    out = F.conv2d(stacked, weight.reshape(g * c_out, *weight.shape[2:]), None if bias is None else bias.reshape(-1),
                   stride, padding, dilation, groups * g)
    return out.reshape(rows, g, c_out, *out.shape[2:]).transpose(0, 1).reshape(g * rows, c_out, *out.shape[2:])


@torch.library.custom_op("graft::segment_conv2d", mutates_args=())
def _segment_conv2d_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int],
                       stride: list[int], padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    _check(x, weight, bias, sizes, groups)
    if len(set(sizes)) == 1 and sizes[0] > 0:
        return _stacked(x, weight, bias, sizes[0], stride, padding, dilation, groups)
    return segment_conv2d_reference(x, weight, bias, sizes, stride, padding, dilation, groups)


@_segment_conv2d_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int], stride: list[int],
      padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    _check(x, weight, bias, sizes, groups)
    spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1
               for n, k, s, p, d in zip(x.shape[2:], weight.shape[3:], stride, padding, dilation)]
    return x.new_empty((x.shape[0], weight.shape[1], *spatial))


inference_only(_segment_conv2d_op, "segment_conv2d")  # no backward formula: a backward raises


@register_flop_formula(torch.ops.graft.segment_conv2d)
def _flops(x_shape, w_shape, bias_shape, sizes, stride, padding, dilation, groups, *args, out_shape=None,
           **kwargs) -> int:
    """Every row meets one segment's ``[C_out, C / groups, kh, kw]`` weight, as a convolution."""
    return conv_flop_count(list(x_shape), list(w_shape[1:]), list(out_shape), transposed=False)


def segment_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: Sequence[int],
                   stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
                   groups: int = 1) -> torch.Tensor:
    """``conv2d(x[rows of g], weight[g], bias[g], ...)`` for every segment ``g``.

    Args:
        x: ``[M, C, H, W]``, float32, float16 or bfloat16.
        weight: ``[G, C_out, C / groups, kh, kw]``, x's dtype and device.
        bias: ``[G, C_out]`` or None.
        sizes: G ints >= 0 summing to M (SymInts when traced).
        stride, padding, dilation, groups: as ``torch.nn.functional.conv2d`` takes them (padding
            as two ints).

    Returns:
        ``[M, C_out, H', W']`` in x's dtype, each segment's rows where its input rows were.

    Raises:
        GraftError: wrong ranks or channels, a bias not ``[G, C_out]``, sizes that do not match G
            or M, mixed or unsupported dtypes, mixed devices.
    """
    return torch.ops.graft.segment_conv2d(x, weight, bias, list(sizes), list(stride), list(padding), list(dilation),
                                          groups)
