"""One spelling per computation: the rewrites every captured graph goes through.

Export's training IR and a program functionalized by ``run_decompositions({})`` (which capture
uses for in-place writes into views and for autocast regions) spell some computations
differently: the second decomposes ``batch_norm`` into ``_native_batch_norm_legit_no_training``
and an item, ``reshape`` and ``flatten`` into ``view``, ``contiguous`` into ``clone``, and drops
eval-mode dropout. Layer keys compare ops, so without one spelling a fragment captured one way
shares nothing with the same layers captured the other way. Each rewrite here gives the same
values, bit for bit:

==========================================  ===================================================
``view``, ``_unsafe_view`` (x, size)        ``reshape(x, size)``: equal values in a functional
                                            graph, and no stride requirement on ``x`` (in a
                                            realigned graph ``x`` may be a concatenation)
``contiguous(x)``                           ``clone(x, memory_format=contiguous_format)``
``_native_batch_norm_legit_no_training``    ``batch_norm(..., training=False, ...,
and its item 0                              cudnn_enabled=False)``, as export writes it (export
                                            traces with cuDNN off)
dropout with ``train=False``                its input: dropout is the identity then
``new_zeros/ones/full/empty(x, size)``      ``zeros/ones/full/empty(size, dtype=, device=)``
                                            with ``x``'s dtype and device: only those are read,
                                            so the result is a constant, not a value of ``x``
==========================================  ===================================================

Reshapes are then collapsed where they make a round trip: a chain of reshapes that ends in its
source's own shape (sizes compared as symbolic expressions) is its source.
Functionalizing an in-place write into a flattened view leaves such round trips
(``reshape(reshape(y, [s, 1, 4, 4]), [s, 16])``); without collapsing them a fragment's last
layer feeds a reshape in one capture and the output in another. Reshapes spelled with different
ops (``flatten`` against ``reshape`` with sizes) stay as they are; layer keys compare them by
input and output shape (``keys.py``).

Functionalizing a write into a view also replays views of the updated base: it scatters the
written value back (``slice_scatter``), regenerates the base, and slices the view out again. How
long that detour is depends on where the base starts (a fragment's input, or a tensor further
up), so the same layers would differ between fragments. Three identities cut it short: a slice
of a scatter over the same range is the scattered value (likewise ``select`` of
``select_scatter``), a slice over a whole dim is its input, and a scatter over a whole tensor is
the scattered value.

Last, dead code goes (``Graph.eliminate_dead_code``, which keeps mutations, asserts and random
ops): functionalization leaves views of updated bases that nothing reads, and an extra user
changes a layer's users signature in alignment.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx as fx

from .facts import expr_of

aten = torch.ops.aten

RESHAPES = frozenset({aten.reshape.default, aten.flatten.using_ints, aten.unflatten.int})
"""Ops whose values are fixed by their input and their output's shape alone (row-major order)."""


def _shape(node: fx.Node) -> tuple | None:
    value = node.meta.get("val")
    return tuple(expr_of(d) for d in value.shape) if isinstance(value, torch.Tensor) else None


def _collapse(node: fx.Node) -> None:
    """A chain of reshapes ending in ``node`` whose source has ``node``'s shape: to its source.

    Only round trips go: a chain that ends elsewhere is kept whole, since a fragment may start
    at any value along it and must find the same reshapes there."""
    source = node.args[0]
    while isinstance(source, fx.Node) and source.op == "call_function" and source.target in RESHAPES:
        source = source.args[0]
    if isinstance(source, fx.Node) and _shape(source) is not None and _shape(source) == _shape(node):
        _replace(node, source)


MAX_END = 2**63 - 1
"""What ``x[a:]`` records as the end of a slice."""


def _range(node: fx.Node, first: int) -> tuple | None:
    """``(dim, start, end, step)`` of a slice or slice_scatter (arguments from ``first`` on),
    with defaults filled and the dim normalised; None unless all are plain ints."""
    names, defaults = ("dim", "start", "end", "step"), (0, 0, MAX_END, 1)
    values = [node.args[first + i] if first + i < len(node.args) else node.kwargs.get(n, d)
              for i, (n, d) in enumerate(zip(names, defaults))]
    values = [d if v is None else v for v, d in zip(values, defaults)]
    if not all(type(v) is int for v in values):
        return None
    ndim = len(_shape(node.args[0]) or ())
    return (values[0] % ndim if ndim else values[0], *values[1:])


def _whole(rng: tuple | None) -> bool:
    return rng is not None and rng[1] == 0 and rng[3] == 1


def _replace(node: fx.Node, value: fx.Node) -> None:
    node.replace_all_uses_with(value)
    node.graph.erase_node(node)


def _slice(node: fx.Node) -> None:
    """``x[whole dim]`` -> ``x``; a slice of ``slice_scatter(b, src, range)`` over that range -> ``src``."""
    source, rng = node.args[0], _range(node, 1)
    if rng is None or not isinstance(source, fx.Node):
        return
    if _whole(rng) and _shape(source) == _shape(node):
        _replace(node, source)
    elif source.target is aten.slice_scatter.default and _range(source, 2) == rng \
            and _shape(source.args[1]) == _shape(node):
        _replace(node, source.args[1])


def _whole_scatter(node: fx.Node) -> None:
    """``slice_scatter(b, src, whole range)`` with ``src`` of ``b``'s shape -> ``src``."""
    base, src = node.args[0], node.args[1]
    if _whole(_range(node, 2)) and _shape(src) == _shape(base) and src.meta["val"].dtype == base.meta["val"].dtype:
        _replace(node, src)


def _select(node: fx.Node) -> None:
    """``select(select_scatter(b, src, dim, i), dim, i)`` -> ``src``."""
    source = node.args[0]
    if isinstance(source, fx.Node) and source.target is aten.select_scatter.default \
            and tuple(source.args[2:4]) == tuple(node.args[1:3]) and _shape(source.args[1]) == _shape(node):
        _replace(node, source.args[1])


def _as(target: torch._ops.OpOverload) -> Callable[[fx.Node], None]:
    """Retarget a node to an op with the same arguments."""
    def rewrite(node: fx.Node) -> None:
        node.target = target
    return rewrite


def _contiguous(node: fx.Node) -> None:
    if node.kwargs.get("memory_format", torch.contiguous_format) is torch.contiguous_format:
        node.target = aten.clone.default
        node.kwargs = {"memory_format": torch.contiguous_format}


def _train(node: fx.Node) -> object:
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("train")


def _dropout_off(node: fx.Node) -> None:
    if _train(node) is False:
        node.replace_all_uses_with(node.args[0])
        node.graph.erase_node(node)


def _batch_norm(node: fx.Node) -> None:
    """``_native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)`` whose only
    users take item 0 (the normalised value) becomes ``batch_norm``."""
    items = list(node.users)
    if not all(u.target is operator.getitem and u.args[1] == 0 for u in items):
        return
    x, w, b, mean, var, momentum, eps = node.args
    for item in items:
        with node.graph.inserting_before(item):
            bn = node.graph.call_function(aten.batch_norm.default, (x, w, b, mean, var, False, momentum, eps, False))
        bn.meta = {**node.meta, "val": item.meta.get("val")}
        item.replace_all_uses_with(bn)
        node.graph.erase_node(item)
    node.graph.erase_node(node)


def _filled(target: torch._ops.OpOverload) -> Callable[[fx.Node], None]:
    """``new_*(x, size, ...)`` -> ``target(size, ..., dtype=x's, device=x's)``."""
    def rewrite(node: fx.Node) -> None:
        like = node.args[0].meta["val"]
        kwargs = dict(node.kwargs)
        kwargs["dtype"] = kwargs.get("dtype") or like.dtype
        kwargs["device"] = kwargs.get("device") or like.device
        node.target = target
        node.args = node.args[1:]
        node.kwargs = kwargs
    return rewrite


REWRITES: dict[torch._ops.OpOverload, Callable[[fx.Node], None]] = {
    aten.view.default: _as(aten.reshape.default),
    aten._unsafe_view.default: _as(aten.reshape.default),
    aten.contiguous.default: _contiguous,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    **{op: _dropout_off for op in (aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
                                   aten.feature_alpha_dropout.default)},
    aten.new_zeros.default: _filled(aten.zeros.default),
    aten.new_ones.default: _filled(aten.ones.default),
    aten.new_full.default: _filled(aten.full.default),
    aten.new_empty.default: _filled(aten.empty.memory_format),
}
"""Rewrites by ATen overload (see the module docstring)."""

SIMPLIFY: dict[Any, Callable[[fx.Node], None]] = {
    **{op: _collapse for op in RESHAPES},
    aten.slice.Tensor: _slice,
    aten.slice_scatter.default: _whole_scatter,
    aten.select.int: _select,
}
"""Value identities applied in graph order, after ``REWRITES`` (see the module docstring)."""


def canonicalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Apply ``REWRITES`` to every node of ``gm`` in place, then ``SIMPLIFY``, then drop dead
    code; returns ``gm`` recompiled."""
    for node in list(gm.graph.nodes):
        rewrite = REWRITES.get(node.target) if node.op == "call_function" else None
        if rewrite is not None:
            rewrite(node)
    for node in list(gm.graph.nodes):
        simplify = SIMPLIFY.get(node.target) if node.op == "call_function" else None
        if simplify is not None:
            simplify(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm
