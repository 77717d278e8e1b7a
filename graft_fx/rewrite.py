"""Classes -> one realigned fx GraphModule: private parts, gathers, shared segments, scatter.

Each class becomes one node that runs on its *row group*: the rows of its present fragments,
concatenated in ascending fragment order along the class's ``rows.Layout``. Because every class
lists its fragments in that one canonical order, an input class that serves exactly the same
fragments is passed straight through; where fragments meet, the input is gathered with one
``torch.cat`` of zero-copy ``narrow`` views (runs of fragments that sit next to each other in
one source class), so rows are copied once and never permuted. A class whose users serve fewer
fragments (a shared region that ends inside the fragments) is narrowed back for each of them.
The outputs are narrow views of their class's rows, one per fragment.

Per-fragment batch sizes are read from the inputs at run time (``x.size(0)``), and every size
derived from the batch (``s``, ``s // 2``, ``3 * s``) is rebuilt from the row count of the
consuming node's row group (``symbolic.materialize``), so a size read in one row group is never
used in another. Graphs are built for a set of present fragments, so absent fragments cost
nothing. Export's runtime checks are not emitted: the realigned module checks its inputs itself.
In-place writes back to inputs and buffers run last, after every read of the old values.

**Weights that differ** (``share="structure"``, ``keys.STRUCTURAL``): a constant class whose
members hold different tensors gets one ``get_attr`` per member, and every node reads its own
fragment's. A shared class that reads such weights runs *per segment*: once per run of adjacent
fragments whose weights agree, each on the rows of its run, with the run's weights, and the runs'
results are joined along the rows; the lowering turns the joins it knows (linears,
convolutions, norms) into graft's segment ops. Written in plain torch ops, the per-segment form
is exact whatever the layer, and the kernels stay a rewrite of it.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .align import NodeClass, flat_args
from .analysis import Analysis
from .capture import fetch_attr
from .keys import same_values
from .rows import Layout, cat_rows, take_rows
from .separable import Role
from .symbolic import materialize


def _writes_back(c: NodeClass) -> bool:
    return c.role is Role.WRITE


class _Emitter:
    def __init__(self, analyses: list[Analysis], classes: list[NodeClass], present: frozenset[int],
                 differentiable: bool = False):
        self.analyses = analyses
        self.present = present
        self.differentiable = differentiable
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.attr_names: dict[int, str] = {}
        self.value: dict[int, fx.Node] = {}
        self.own: dict[tuple[int, fx.Node], fx.Node] = {}  # (fragment, weight) -> its get_attr, where they differ
        self.class_of = {m: c for c in classes for m in c.members}
        self.batch: dict[int, fx.Node] = {}
        self.prefix_rows: dict[tuple[int, ...], Any] = {}
        self.moved: dict[tuple, fx.Node] = {}  # gathers, slices and sizes, built once each
        self.flat: dict[fx.Node, list] = {}
        self.inputs = {
            (f, p): self.graph.placeholder(f"f{f}_{p.name}")
            for f, a in enumerate(analyses) for p in a.captured.placeholders
        }

    # --- row counts -------------------------------------------------------------------------

    def rows(self, fragments: tuple[int, ...]) -> Any:
        """The row count of a row group: a graph value, built once per prefix."""
        if not fragments:
            return 0
        if len(fragments) == 1:
            return self.batch_size(fragments[0])
        if fragments not in self.prefix_rows:
            self.prefix_rows[fragments] = self.graph.call_function(
                operator.add, (self.rows(fragments[:-1]), self.batch_size(fragments[-1])))
        return self.prefix_rows[fragments]

    def batch_size(self, f: int) -> fx.Node:
        if f not in self.batch:
            first = self.analyses[f].captured.placeholders[0]
            self.batch[f] = self.graph.call_method("size", (self.inputs[(f, first)], 0))
        return self.batch[f]

    def group(self, c: NodeClass) -> tuple[int, ...]:
        return tuple(f for f in c.fragments if f in self.present)

    def offset(self, c: NodeClass, f: int) -> Any:
        group = self.group(c)
        return self.rows(group[: group.index(f)])

    def size(self, f: int, node: fx.Node, group: tuple[int, ...]) -> Any:
        """A batch-derived value of fragment ``f`` for the rows of ``group``."""
        key = ("size", f, node, group)
        if key not in self.moved:
            a = self.analyses[f]
            self.moved[key] = materialize(a.facts[node].scalar, a.captured.batch, self.rows(group), self.graph)
        return self.moved[key]

    # --- rows moving between classes --------------------------------------------------------

    def layout(self, c: NodeClass) -> Any:
        f, node = c.members[0]
        return self.analyses[f].verdicts[node].layout

    def slice_rows(self, source: NodeClass, fragments: list[int]) -> fx.Node:
        """The rows of ``fragments`` (adjacent in ``source``'s group) of a class's value."""
        value = self.value[source.index]
        if tuple(fragments) == self.group(source):
            return value
        key = ("slice", source.index, tuple(fragments))
        if key not in self.moved:
            start, length = self.offset(source, fragments[0]), self.rows(tuple(fragments))
            layout = self.layout(source)
            if isinstance(layout, Layout) and layout.outer == layout.inner == 1:
                self.moved[key] = self.graph.call_method("narrow", (value, layout.dim, start, length))
            else:
                self.moved[key] = self.graph.call_function(take_rows, (value, layout, start, length))
        return self.moved[key]

    def gather(self, pieces: list[tuple[int, NodeClass]]) -> fx.Node:
        key = ("gather", tuple((f, source.index) for f, source in pieces))
        if key not in self.moved:
            self.moved[key] = self._gather(pieces)
        return self.moved[key]

    def _gather(self, pieces: list[tuple[int, NodeClass]]) -> fx.Node:
        """Runs of fragments adjacent in one source become one slice; the slices are joined."""
        runs: list[tuple[NodeClass, list[int]]] = []
        for f, source in pieces:
            group = self.group(source)
            if runs and runs[-1][0] is source and group.index(f) == group.index(runs[-1][1][-1]) + 1:
                runs[-1][1].append(f)
            else:
                runs.append((source, [f]))
        parts = [self.slice_rows(source, fs) for source, fs in runs]
        if len(parts) == 1:
            return parts[0]
        return self.join(self.layout(pieces[0][1]), parts)

    def join(self, layout: Any, parts: list[fx.Node]) -> fx.Node:
        """The rows of ``parts``, in order, as one value of ``layout``: one ``torch.cat`` along
        the batch dim where the rows are contiguous in it, else ``cat_rows``."""
        if isinstance(layout, Layout) and layout.outer == 1:
            return self.graph.call_function(torch.cat, (parts, layout.dim))
        return self.graph.call_function(cat_rows, (layout, *parts))

    # --- classes ----------------------------------------------------------------------------

    def argument(self, c: NodeClass, position: int, rep_arg: Any) -> Any:
        if not isinstance(rep_arg, fx.Node):
            return rep_arg
        members = self.present_members(c)
        f0, _ = members[0]
        role = self.analyses[f0].verdicts[rep_arg].role
        if role is Role.FOLDED:
            return self.size(f0, rep_arg, self.group(c))
        if role is Role.CONST:
            return self.const(f0, self.flat_args(members[0][1])[position])
        return self.gather([(f, self.class_of[(f, self.flat_args(node)[position])]) for f, node in members])

    def const(self, f: int, node: fx.Node) -> fx.Node:
        """The value of fragment ``f``'s constant ``node``: its class's, or its own where the
        class's members differ."""
        own = self.own.get((f, node))
        return own if own is not None else self.value[self.class_of[(f, node)].index]

    def runs(self, c: NodeClass) -> list[tuple[int, ...]]:
        """The present fragments of a shared class, split into runs of adjacent fragments that
        read the same constants; one run when they all do."""
        members = self.present_members(c)
        consts = [tuple(self.const(f, a) for a in self.flat_args(n) if isinstance(a, fx.Node)
                        and self.analyses[f].verdicts[a].role is Role.CONST) for f, n in members]
        runs: list[list[int]] = []
        for i, (f, _) in enumerate(members):
            if runs and consts[i] == consts[i - 1]:
                runs[-1].append(f)
            else:
                runs.append([f])
        return [tuple(r) for r in runs]

    def flat_args(self, node: fx.Node) -> list:
        if node not in self.flat:
            self.flat[node] = flat_args(node)
        return self.flat[node]

    def present_members(self, c: NodeClass) -> list[tuple[int, fx.Node]]:
        return [(f, n) for f, n in c.members if f in self.present]

    def attribute(self, obj: Any, wanted: str) -> str:
        """A name in the new root for a tensor, reused when the object repeats."""
        if id(obj) in self.attr_names:
            return self.attr_names[id(obj)]
        name, k = wanted, 1
        while hasattr(self.root, name):
            name, k = f"{wanted}_{k}", k + 1
        setattr(self.root, name, obj)
        self.attr_names[id(obj)] = name
        return name

    def emit(self, c: NodeClass) -> None:
        members = self.present_members(c)
        if not members:
            return
        f0, rep = members[0]
        if c.role is Role.INPUT:
            self.value[c.index] = self.inputs[(f0, rep)]
            return
        if rep.op == "get_attr":
            self.emit_weights(members)
            return
        if (c.shared or c.role is Role.CONST) and len(runs := self.runs(c)) > 1:
            self.emit_segments(c, runs)
            return
        leaves, spec = pytree.tree_flatten((rep.args, rep.kwargs))
        args, kwargs = pytree.tree_unflatten([self.argument(c, i, a) for i, a in enumerate(leaves)], spec)
        name = rep.name if c.shared or c.role is Role.CONST else f"f{f0}_{rep.name}"
        self.value[c.index] = self.graph.create_node(rep.op, rep.target, tuple(args), dict(kwargs), name=name)

    def emit_weights(self, members: list[tuple[int, fx.Node]]) -> None:
        """A constant class: one ``get_attr`` when its members' tensors are equal, else one per
        distinct tensor, each member reading its own (a class keyed by structure)."""
        tensors = [fetch_attr(self.analyses[f].gm, n.target) for f, n in members]
        first = tensors[0]
        if all(self.same(t, first) for t in tensors):
            f0, rep = members[0]
            self.value[self.class_of[(f0, rep)].index] = self.graph.get_attr(self.attribute(first, rep.target))
            return
        made: list[tuple[torch.Tensor, fx.Node]] = []  # one get_attr per distinct value
        for (f, n), t in zip(members, tensors):
            node = next((g for u, g in made if self.same(u, t)), None)
            if node is None:
                node = self.graph.get_attr(self.attribute(t, f"f{f}_{n.target}"))
                made.append((t, node))
            self.own[(f, n)] = node

    def same(self, a: Any, b: Any) -> bool:
        """Whether two fragments' constants may be read through one ``get_attr``: the same object,
        or equal values, except, in a differentiable graph, two distinct tensors that require
        grad (each must receive its own fragment's gradient)."""
        if a is b:
            return True
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return not (self.differentiable and (a.requires_grad or b.requires_grad)) and same_values(a, b)

    def emit_segments(self, c: NodeClass, runs: list[tuple[int, ...]]) -> None:
        """A shared class whose fragments' weights differ: its node once per run (`runs`), on the
        run's rows, with the run's weights; the results joined along the class's rows. A constant
        class computed from weights that differ (keys prevent it; this keeps it exact anyway):
        once per run, each member reading its run's value."""
        members = dict(self.present_members(c))
        f0, rep = self.present_members(c)[0]
        leaves, spec = pytree.tree_flatten((rep.args, rep.kwargs))
        parts = []
        for run in runs:
            head = members[run[0]]
            values = []
            for i, a in enumerate(leaves):
                role = self.analyses[f0].verdicts[a].role if isinstance(a, fx.Node) else None
                if role is None:
                    values.append(a)
                elif role is Role.FOLDED:
                    values.append(self.size(run[0], self.flat_args(head)[i], run))
                elif role is Role.CONST:
                    values.append(self.const(run[0], self.flat_args(head)[i]))
                else:
                    values.append(self.gather([(f, self.class_of[(f, self.flat_args(members[f])[i])]) for f in run]))
            args, kwargs = pytree.tree_unflatten(values, spec)
            parts.append(self.graph.create_node(rep.op, rep.target, tuple(args), dict(kwargs),
                                                name=f"{rep.name}_f{'_'.join(map(str, run))}"))
            if c.role is Role.CONST:
                self.own.update({(f, members[f]): parts[-1] for f in run})
        if c.role is Role.CONST:
            return
        self.value[c.index] = self.join(self.layout(c), parts)

    def output_leaf(self, f: int, leaf: Any) -> Any:
        if not isinstance(leaf, fx.Node):
            return leaf
        analysis = self.analyses[f]
        if analysis.verdicts[leaf].role is Role.FOLDED:
            return self.size(f, leaf, (f,))
        source = self.class_of[(f, leaf)]
        if source.role is Role.CONST:
            return self.const(f, leaf)
        return self.slice_rows(source, [f])

    def finish(self) -> fx.GraphModule:
        outputs = [
            self.output_leaf(f, leaf)
            for f, a in enumerate(self.analyses) if f in self.present
            for leaf in a.captured.out_leaves
        ]
        self.graph.output(tuple(outputs))
        self.graph.lint()
        gm = fx.GraphModule(self.root, self.graph, class_name="RealignedGraph")
        gm.meta["graft_values"] = {i: node.name for i, node in self.value.items()}
        return gm


def emit(analyses: list[Analysis], classes: list[NodeClass], present: frozenset[int],
         differentiable: bool = False) -> fx.GraphModule:
    """The realigned GraphModule for the fragments in ``present``.

    It takes every fragment's inputs, flat and in order (anything for an absent fragment), and
    returns the flat output leaves of the present fragments, in order. ``differentiable``: for
    autograd into the weights, distinct tensors that require grad are never read as one, even
    where their values are equal (a layer shared by value then runs once per run of fragments
    reading the same parameter objects, as a layer shared by structure does).
    """
    emitter = _Emitter(analyses, classes, present, differentiable)
    for c in sorted(classes, key=_writes_back):  # stable: write-backs last, the rest in order
        emitter.emit(c)
    return emitter.finish()
