"""Classes -> one realigned fx GraphModule: private heads, gathers, shared segments, scatter.

Each class becomes one node that runs on its *row group*: the rows of its present fragments,
concatenated in ascending fragment order. Because every class lists its fragments in that one
canonical order, an input class that serves exactly the same fragments is passed straight
through; where fragments meet, the input is gathered with one ``torch.cat`` of zero-copy
``narrow`` views (contiguous row ranges of the input classes), so rows are copied once and never
permuted. The outputs are ``narrow`` views of their class's rows, one per fragment.

Per-fragment batch sizes are read from the inputs at run time (``x.size(0)``), and every value
that stood for the batch size in a fragment (a ``reshape(n, -1)``, an ``expand(n, ...)``) becomes
the row count of the consuming node's row group, so a size read in one row group is never used
in another. Other sizes are literals: the realigned module checks input shapes on every call.
Graphs are built for a set of present fragments, so absent fragments cost nothing.
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
from .rows import BATCH
from .separable import Role


def take_rows(value: Any, start: int, length: int) -> Any:
    """Rows [start, start + length) of every tensor in a (possibly nested) value."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.narrow(0, start, length), value)


def cat_rows(*values: Any) -> Any:
    """Concatenate the rows of several values of one structure, tensor by tensor."""
    return pytree.tree_map(lambda *ts: torch.cat(ts) if isinstance(ts[0], torch.Tensor) else ts[0], *values)


class _Emitter:
    def __init__(self, analyses: list[Analysis], classes: list[NodeClass], present: frozenset[int]):
        self.analyses = analyses
        self.present = present
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.attr_names: dict[int, str] = {}
        self.value: dict[int, fx.Node] = {}
        self.class_of = {m: c for c in classes for m in c.members}
        self.batch: dict[int, fx.Node] = {}
        self.prefix_rows: dict[tuple[int, ...], Any] = {}
        self.moved: dict[tuple, fx.Node] = {}  # gathers and slices, built once each
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

    def materialize(self, scalar: Any, group: tuple[int, ...]) -> Any:
        if scalar is BATCH:
            return self.rows(group)
        if isinstance(scalar, (tuple, list)):
            return type(scalar)(self.materialize(s, group) for s in scalar)
        return scalar

    # --- rows moving between classes --------------------------------------------------------

    def slice_rows(self, source: NodeClass, fragments: list[int]) -> fx.Node:
        """The rows of ``fragments`` (contiguous in ``source``'s group) of a class's value."""
        value = self.value[source.index]
        if tuple(fragments) == self.group(source):
            return value
        key = ("slice", source.index, tuple(fragments))
        if key not in self.moved:
            start, length = self.offset(source, fragments[0]), self.rows(tuple(fragments))
            if self._is_tensor(source):
                self.moved[key] = self.graph.call_method("narrow", (value, 0, start, length))
            else:
                self.moved[key] = self.graph.call_function(take_rows, (value, start, length))
        return self.moved[key]

    def gather(self, pieces: list[tuple[int, NodeClass]], tensor: bool) -> fx.Node:
        key = ("gather", tuple((f, source.index) for f, source in pieces))
        if key not in self.moved:
            self.moved[key] = self._gather(pieces, tensor)
        return self.moved[key]

    def _gather(self, pieces: list[tuple[int, NodeClass]], tensor: bool) -> fx.Node:
        runs: list[tuple[NodeClass, list[int]]] = []
        for f, source in pieces:
            if runs and runs[-1][0] is source:
                runs[-1][1].append(f)
            else:
                runs.append((source, [f]))
        parts = [self.slice_rows(source, fs) for source, fs in runs]
        if len(parts) == 1:
            return parts[0]
        if tensor:
            return self.graph.call_function(torch.cat, (parts, 0))
        return self.graph.call_function(cat_rows, tuple(parts))

    def _is_tensor(self, c: NodeClass) -> bool:
        f, node = c.members[0]
        return isinstance(self.analyses[f].facts[node].value, torch.Tensor)

    # --- classes ----------------------------------------------------------------------------

    def argument(self, c: NodeClass, position: int, rep_arg: Any) -> Any:
        group = self.group(c)
        f0, _ = self.present_members(c)[0]
        if not isinstance(rep_arg, fx.Node):
            return rep_arg
        verdict = self.analyses[f0].verdicts[rep_arg]
        if verdict.role is Role.FOLDED:
            return self.materialize(self.analyses[f0].facts[rep_arg].scalar, group)
        pieces = [(f, self.class_of[(f, self.flat_args(node)[position])]) for f, node in self.present_members(c)]
        if verdict.role is Role.CONST:
            return self.value[pieces[0][1].index]
        return self.gather(pieces, self._is_tensor(pieces[0][1]))

    def flat_args(self, node: fx.Node) -> list:
        if node not in self.flat:
            self.flat[node] = flat_args(node)
        return self.flat[node]

    def present_members(self, c: NodeClass) -> list[tuple[int, fx.Node]]:
        return [(f, n) for f, n in c.members if f in self.present]

    def attribute(self, obj: Any, wanted: str) -> str:
        """A name in the new root for a module or tensor, reused when the object repeats."""
        if id(obj) in self.attr_names:
            return self.attr_names[id(obj)]
        name, k = wanted.replace(".", "_"), 1
        while hasattr(self.root, name):
            name, k = f"{wanted.replace('.', '_')}_{k}", k + 1
        if isinstance(obj, nn.Module):
            self.root.add_module(name, obj)
        else:
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
        gm = self.analyses[f0].gm
        leaves, spec = pytree.tree_flatten((rep.args, rep.kwargs))
        args, kwargs = pytree.tree_unflatten([self.argument(c, i, a) for i, a in enumerate(leaves)], spec)
        target = rep.target
        if rep.op in ("call_module", "get_attr"):
            target = self.attribute(gm.get_submodule(target) if rep.op == "call_module" else fetch_attr(gm, target), target)
        name = rep.name if c.shared or c.role is Role.CONST else f"f{f0}_{rep.name}"
        self.value[c.index] = self.graph.create_node(rep.op, target, tuple(args), dict(kwargs), name=name)

    def output_leaf(self, f: int, leaf: Any) -> Any:
        if not isinstance(leaf, fx.Node):
            return leaf
        analysis = self.analyses[f]
        if analysis.verdicts[leaf].role is Role.FOLDED:
            return self.materialize(analysis.facts[leaf].scalar, (f,))
        source = self.class_of[(f, leaf)]
        if source.role is Role.CONST:
            return self.value[source.index]
        return self.slice_rows(source, [f])

    def finish(self) -> fx.GraphModule:
        outputs = [
            self.output_leaf(f, leaf)
            for f, a in enumerate(self.analyses) if f in self.present
            for leaf in a.captured.out_leaves
        ]
        self.graph.output(tuple(outputs))
        self.graph.lint()
        return fx.GraphModule(self.root, self.graph, class_name="RealignedGraph")



def emit(analyses: list[Analysis], classes: list[NodeClass], present: frozenset[int]) -> fx.GraphModule:
    """The realigned GraphModule for the fragments in ``present``.

    It takes every fragment's inputs, flat and in order (anything for an absent fragment), and
    returns the flat output leaves of the present fragments, in order.
    """
    emitter = _Emitter(analyses, classes, present)
    for c in classes:
        emitter.emit(c)
    return emitter.finish()
