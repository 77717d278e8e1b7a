"""Where a model can be cut, and the (head, tail) pair that one cut makes.

A cut point is a place in the graph where exactly one tensor crosses from the layers before to
the layers after: the phone runs the head, uploads that tensor, and the server runs the tail.
We walk the nodes in graph order and keep the set of values that are live across each gap
(produced before it, used after it). Values that the tail can rebuild on its own do not count:
constants (weights and ops on them) are recomputed in the tail, sizes derived from the batch are
rebuilt from the crossing tensor's own row count (``symbolic.materialize``), and export's runtime
checks stay with the values they check. A gap whose live set is one
tensor that carries the batch rows is a cut. This handles DAGs with no special case: inside a
residual block or an Inception module two branches are live, so no cut is offered there.

Cut points are listed in graph order, from the raw input (the whole model runs on the server)
to the last layer before the output.

``split`` makes the (head, tail) pair of one cut; ``tails`` makes the tails of many cuts from one
analysis of the model (a server building one instance per fragment type captures the model once,
not once per type). Both build their graphs from the same analysis by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .analysis import Analysis, analyze
from .capture import layer_name
from .errors import GraftError
from .facts import Kind
from .rows import Layout
from .separable import GATHERABLE, Role
from .symbolic import materialize

_REBUILT = (Role.CONST, Role.FOLDED, Role.CHECK, Role.WRITE)


@dataclass(frozen=True)
class CutPoint:
    """A cut after node ``name`` of the captured graph (``layer`` is its readable module path):
    ``activation_bytes`` cross per sample; ``flops_before`` is the fraction of the model's FLOPs
    that runs before the cut (on the phone)."""

    name: str
    activation_bytes: int
    flops_before: float
    layer: str = ""


def _rebuildable(a: Analysis, node: fx.Node) -> bool:
    return a.verdicts[node].role in _REBUILT


def located_cuts(a: Analysis) -> list[tuple[CutPoint, int]]:
    """Every cut point with the graph position of its crossing node.

    A gap right after node c is a cut when c is the only live value there, c carries the batch
    rows, and something other than the output still uses it. Every input is live from the start,
    so a model with several inputs offers no cut before its last one.
    """
    nodes = a.nodes
    position = {n: i for i, n in enumerate(nodes)}
    end = len(nodes)
    last_use = {n: max((position.get(u, end) for u in n.users if u.op == "output" or not _rebuildable(a, u)),
                       default=-1) for n in nodes}
    expiring: dict[int, list[fx.Node]] = {}
    for n in nodes:
        expiring.setdefault(last_use[n], []).append(n)
    last_input = max(i for i, n in enumerate(nodes) if n.op == "placeholder")
    total = sum(a.facts[n].flops_per_row for n in nodes) or 1
    flops = 0
    live: set[fx.Node] = set()
    found: list[tuple[CutPoint, int]] = []
    for i, c in enumerate(nodes):
        flops += a.facts[c].flops_per_row
        if not _rebuildable(a, c) and last_use[c] > i:
            live.add(c)
        live.difference_update(expiring.get(i, ()))
        if i < last_input or live != {c} or all(u.op == "output" for u in c.users):
            continue
        facts = a.facts[c]
        verdict = a.verdicts[c]
        if facts.kind is Kind.ROWS and facts.is_tensor and verdict.role in GATHERABLE and verdict.layout == Layout(0):
            found.append((CutPoint(c.name, facts.bytes_per_row, flops / total, layer_name(c)), i))
    return found


def cut_points(model: Any, example_inputs: Any) -> list[CutPoint]:
    """The places where ``model`` can be cut so that exactly one tensor crosses, in graph order.

    ``example_inputs`` is a tensor or a tuple of tensors with a batch dim 0 (its size is free).
    """
    return [cut for cut, _ in located_cuts(analyze(model, example_inputs, f"model ({type(model).__name__})"))]


def _find(a: Analysis, located: Sequence[tuple[CutPoint, int]], at: CutPoint | str) -> tuple[fx.Node, int]:
    """The crossing node of cut ``at`` (a CutPoint or its name) and its graph position, among the
    ``located`` cuts of ``a``; GraftError listing the valid names when there is no such cut."""
    name = at.name if isinstance(at, CutPoint) else at
    for cut, pos in located:
        if cut.name == name:
            return a.nodes[pos], pos
    names = [c.name for c, _ in located]
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise GraftError(f"{name!r} is not a cut point of this model; its {len(names)} cut points are: {shown}")


def _analyzed(model: Any, example_inputs: Any) -> tuple[Analysis, list[tuple[CutPoint, int]]]:
    """The one analysis of ``model`` that ``split`` and ``tails`` cut from, and its located cuts."""
    a = analyze(model, example_inputs, f"model ({type(model).__name__})")
    return a, located_cuts(a)


def split(model: Any, at: CutPoint | str, example_inputs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Cut ``model`` at ``at`` (a CutPoint or its name) into ``(head, tail)`` GraphModules.

    ``tail(head(x))`` equals ``model(x)``. Both are in graft_fx's canonical form (ATen ops, a
    symbolic batch recorded in every node's ``meta["val"]``), so ``realign`` takes the tail as it
    is, with no example inputs and no second capture. Raises GraftError, listing the model's cut
    points, when ``at`` is not one of them.
    """
    a, located = _analyzed(model, example_inputs)
    cut, pos = _find(a, located, at)
    return _head(a, cut, pos), _tail(a, cut, pos)


def tails(model: Any, at: Sequence[CutPoint | str], example_inputs: Any) -> list[fx.GraphModule]:
    """The tail at each cut of ``at`` (CutPoints or names, any order, repeats allowed), as
    ``[split(model, c, example_inputs)[1] for c in at]`` returns them, from ONE analysis.

    Capturing and analysing a model is the expensive part of a cut (seconds for a resnet50;
    building the tail graph from the analysis is milliseconds), so a server that builds the tails
    of many fragment types of one model cuts them all here. Every name is checked before any tail
    is built: GraftError, listing the model's cut points, for the first that is not a cut point.
    The tails hold the model's own parameter and buffer tensors, as ``split``'s do.
    """
    if isinstance(at, (str, CutPoint)):
        raise GraftError(f"tails() takes a list of cut points; got one {type(at).__name__}: pass [{at!r}]")
    a, located = _analyzed(model, example_inputs)
    found = [_find(a, located, c) for c in at]
    return [_tail(a, cut, pos) for cut, pos in found]


def _written_before(a: Analysis, node: fx.Node, pos: int) -> bool:
    """Whether a write-back stores a value computed up to position ``pos`` (in the head)."""
    return a.nodes.index(node.args[1]) <= pos


def _head(a: Analysis, cut: fx.Node, pos: int) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in a.nodes[: pos + 1]:
        env[n] = graph.node_copy(n, env.__getitem__)
    for n in a.nodes[pos + 1:]:  # the head's in-place updates (a batch norm's counter, say)
        if a.verdicts[n].role is Role.WRITE and _written_before(a, n, pos) and all(i in env for i in n.all_input_nodes):
            graph.node_copy(n, env.__getitem__)
    graph.output(env[cut])
    return _module(a, graph, "Head")


def _tail(a: Analysis, cut: fx.Node, pos: int) -> fx.GraphModule:
    graph = fx.Graph()
    placeholder = graph.placeholder(cut.name)
    placeholder.meta["val"] = cut.meta["val"]  # its shape, not the layer that made it: that ran in the head
    env: dict[fx.Node, Any] = {cut: placeholder}
    batch = a.captured.batch
    rows: list[fx.Node] = []

    def row_count() -> fx.Node:
        if not rows:
            rows.append(graph.call_function(torch.ops.aten.sym_size.int, (placeholder, 0)))
            rows[0].meta["val"] = placeholder.meta["val"].shape[0]
        return rows[0]

    def rebuild(n: fx.Node) -> Any:
        """A value from before the cut: a recomputed constant, or a size rebuilt from the rows."""
        if n not in env:
            assert _rebuildable(a, n), f"{n.name} crosses the cut"
            if a.verdicts[n].role is Role.FOLDED:
                env[n] = materialize(a.facts[n].scalar, batch, row_count(), graph)
                if isinstance(env[n], fx.Node):
                    env[n].meta["val"] = n.meta.get("val")
            else:
                env[n] = graph.node_copy(n, rebuild)
        return env[n]

    for n in a.nodes[pos + 1:]:
        role = a.verdicts[n].role
        if role is Role.WRITE and _written_before(a, n, pos):
            continue  # an update the head made: it ran there
        if role in (Role.CHECK, Role.WRITE) and any(i not in env and not _rebuildable(a, i) for i in n.all_input_nodes):
            continue  # a check of, or a write-back to, a value of the head's: it ran there
        env[n] = rebuild(n) if role is Role.FOLDED else graph.node_copy(n, rebuild)
    leaves = [fx.node.map_arg(leaf, rebuild) for leaf in a.captured.out_leaves]
    graph.output(pytree.tree_unflatten(leaves, a.captured.out_spec))
    return _module(a, graph, "Tail")


def _module(a: Analysis, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule over the model's own weights, without the nodes it does not use, marked as
    canonical (``meta["graft_batch"]``) so that ``realign`` takes it without a second capture."""
    gm = fx.GraphModule(a.gm, graph, class_name=name)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.meta["graft_batch"] = a.captured.batch
    return gm
