"""Where a tensor's batch rows live, and how to take and concatenate them.

Re-alignment concatenates the rows of several fragments and later takes each fragment's rows
back. At the ATen level the batch does not always sit in dim 0 as one block: a transpose moves it
to dim 1 (an LSTM's state, attention's ``[L, B, E]``), a reshape folds it with a neighbour
(``[B, L, E] -> [B * H, L, d]``, or ``[L, B, E] -> [L * B, E]``). A ``Layout`` records exactly
that: the batch is in dim ``dim``, whose size is ``outer * batch * inner``, laid out row-major as
``(outer, batch, inner)``. Sample ``i`` then owns, for every index of the dims before ``dim`` and
every outer index, one contiguous run of ``inner * (product of the dims after dim)`` elements.

Taking rows ``[start, start + n)`` is a ``narrow`` of dim ``dim`` when ``outer == 1`` (a view),
and a narrow of the unflattened ``(outer, batch * inner)`` pair otherwise. Concatenating is the
inverse. Both work on pytrees of tensors with a matching pytree of layouts (``None`` for a leaf
without rows), which is how tuple-valued ops (batch norm's ``(out, mean, invstd)``) move.
These functions are called from realigned graphs at run time, so they are small and plain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree


class Layout(NamedTuple):
    """The batch of a tensor lives in ``dim``, of size ``outer * batch * inner``, row-major.

    A NamedTuple so that fx writes it into generated code as ``Layout(0, 1, 196)`` with the type
    imported; a tuple of Layouts (and None) is the layout of a tuple value, so test for Layout
    before testing for tuple.
    """

    dim: int
    outer: int = 1
    inner: int = 1

    def moved(self, dim: int) -> "Layout":
        return Layout(dim, self.outer, self.inner)

    def __repr__(self) -> str:
        folds = "" if self.outer == self.inner == 1 else f", outer={self.outer}, inner={self.inner}"
        return f"Layout(dim={self.dim}{folds})"


ROWS = Layout(0)
"""The common case: the batch is dim 0, alone."""


def _take(t: torch.Tensor, layout: Layout, start: Any, length: Any) -> torch.Tensor:
    if layout.outer == 1:
        return t.narrow(layout.dim, start * layout.inner, length * layout.inner)
    d = layout.dim
    split = t.unflatten(d, (layout.outer, -1))
    return split.narrow(d + 1, start * layout.inner, length * layout.inner).flatten(d, d + 1)


def _cat(layout: Layout, parts: list[torch.Tensor]) -> torch.Tensor:
    if layout.outer == 1:
        return torch.cat(parts, layout.dim)
    d = layout.dim
    joined = torch.cat([p.unflatten(d, (layout.outer, -1)) for p in parts], d + 1)
    return joined.flatten(d, d + 1)


def take_rows(value: Any, layout: Any, start: Any, length: Any) -> Any:
    """Rows ``[start, start + length)`` of every leaf of ``value`` that has a layout.

    ``value`` is a tensor or a pytree of them; ``layout`` a Layout or a matching pytree of Layouts
    and ``None`` (leaves without rows are returned as they are). ``start`` and ``length`` are row
    counts (ints or SymInts). Views where the layout allows (``outer == 1``), copies otherwise.
    """
    if isinstance(layout, Layout):
        return _take(value, layout, start, length)
    leaves, spec = pytree.tree_flatten(value)
    layouts = pytree.tree_leaves(layout, is_leaf=lambda x: x is None or isinstance(x, Layout))
    return pytree.tree_unflatten(
        [leaf if lay is None else _take(leaf, lay, start, length) for leaf, lay in zip(leaves, layouts)], spec)


def cat_rows(layout: Any, *values: Any) -> Any:
    """Concatenate the rows of several values of one structure, in order (see ``take_rows``).

    Leaves without a layout are not rows: they are taken from the first value.
    """
    if isinstance(layout, Layout):
        return _cat(layout, list(values))
    flat = [pytree.tree_flatten(v) for v in values]
    layouts = pytree.tree_leaves(layout, is_leaf=lambda x: x is None or isinstance(x, Layout))
    joined = [
        leaves[0] if lay is None else _cat(lay, list(leaves))
        for lay, leaves in zip(layouts, zip(*(f[0] for f in flat)))
    ]
    return pytree.tree_unflatten(joined, flat[0][1])
