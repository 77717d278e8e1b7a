"""The partition of all fragments' nodes into classes that run as one node each.

Put the nodes of every fragment in one pool. A *class* is a set of nodes that the realigned graph
computes once, on the concatenated rows of its members' fragments. The partition is the coarsest
one in which the members of a class

  (a) have equal layer keys (``keys.py``),
  (b) are batch-separable (role SHARED), unless the class is a single node,
  (c) come from distinct fragments, and
  (d) have the same *users signature*: the set of (class of user, argument position) pairs, with
      every private user and the fragment's output written as one token; write-backs, and users
      that only compute what a write-back writes, are left out.

Condition (d) makes sharing grow backwards from the outputs, and it handles DAGs (residual
skips, branches, concatenations) with no special cases. Writing private users as one token lets
a shared region end *inside* the fragments: a private op near the outputs (a ``squeeze()``, a
softmax over the batch, an unknown op) no longer blocks sharing of the layers before it; the
realigned graph narrows the region's rows back to each fragment's private part. The output is
one more such user (the rows are narrowed back to the fragment either way), so a body that one
fragment returns and another feeds to a private head is shared too. Should that ever
make the class graph cyclic (two fragments whose private ops cross between the same shared
layers), the partition is recomputed with the strict signature, which cannot.

Whether a shared region is worth batching is a cost rule (``worth_batching``): its FLOPs per row
must be at least ``FLOPS_PER_COPIED_BYTE`` times the bytes per row copied into it at its gathers.
Regions that fail it are dealt back to their fragments and the rule is applied again.

We compute it by partition refinement (reverse bisimulation): start from classes by key, then
repeatedly split each class by its members' users signatures until the number of classes stops
growing. Members of one fragment that still share a class (a module called twice with the same
inputs' shapes) are dealt into separate lanes, in graph order, and refinement runs again.
Constants (role CONST) are merged by key alone: they have no rows, so they need no signature.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable

import torch.fx as fx
import torch.utils._pytree as pytree

from .analysis import Analysis
from .keys import KeyMaker
from .separable import Role

FLOPS_PER_COPIED_BYTE = 8
"""A shared region must batch at least this many FLOPs per row for each byte per row that its
gathers copy. Matrix products and convolutions run about an order of magnitude more FLOPs per
byte of activation than this, so every conv or linear layer passes; a region of only elementwise
ops (0 counted FLOPs) that needs a copy does not: the copy would cost more than batching saves."""

Member = tuple[int, fx.Node]  # (fragment index, node)


@dataclass
class NodeClass:
    """Nodes of several fragments that run as one node, on their fragments' rows in this order."""

    index: int
    members: list[Member]
    role: Role
    inputs: tuple[int, ...] = ()  # indices of the classes this one reads from

    @property
    def fragments(self) -> tuple[int, ...]:
        return tuple(f for f, _ in self.members)

    @property
    def shared(self) -> bool:
        return len(self.members) > 1 and self.role is Role.SHARED


def flat_args(node: fx.Node) -> list:
    """The leaves of a node's (args, kwargs): positions in this list name its arguments."""
    return pytree.tree_leaves((node.args, node.kwargs))


def _uses(node: fx.Node) -> list[tuple[fx.Node, int]]:
    """(user, flat argument position) for every use of ``node``."""
    return [(user, i) for user in node.users for i, a in enumerate(flat_args(user)) if a is node]


_UNEMITTED = (Role.FOLDED, Role.CHECK)
"""Roles whose nodes get no class: sizes are rebuilt per consumer, export's checks are dropped."""


class _Pool:
    def __init__(self, analyses: list[Analysis], strict: bool, share: str):
        self.strict = strict
        self.share = share
        self.analyses = analyses
        self.members: list[Member] = [
            (f, n) for f, a in enumerate(analyses) for n in a.nodes if a.verdicts[n].role not in _UNEMITTED
        ]
        self.label: dict[Member, int] = {}
        self.write_only = [a.write_only for a in analyses]
        self.uses = {m: _uses(m[1]) for m in self.members if self.role(m) is Role.SHARED}

    def role(self, m: Member) -> Role:
        return self.analyses[m[0]].verdicts[m[1]].role

    def initial_labels(self) -> None:
        keys = KeyMaker(self.share)
        raw: dict[Member, Hashable] = {}
        for f, a in enumerate(self.analyses):
            const_ids: dict[fx.Node, int] = {}
            for n in a.nodes:
                role = a.verdicts[n].role
                batch = a.captured.batch
                if role is Role.CONST:
                    const_ids[n] = keys.const_number(keys.key(a.gm, n, a.facts, a.verdicts, const_ids, batch))
                    raw[(f, n)] = ("const", const_ids[n])
                elif role is Role.SHARED:
                    raw[(f, n)] = ("shared", keys.key(a.gm, n, a.facts, a.verdicts, const_ids, batch))
                elif role not in _UNEMITTED:
                    raw[(f, n)] = ("single", f, n)
        self.label = _renumber(raw)

    def user_token(self, f: int, user: fx.Node, position: int) -> Hashable:
        if user.op == "output":
            return ("output", position) if self.strict else "private"
        if not self.strict and self.role((f, user)) is not Role.SHARED:
            return "private"
        return (self.label[(f, user)], position)

    def signature(self, m: Member) -> frozenset:
        f, node = m
        return frozenset(self.user_token(f, u, i) for u, i in self.uses[m]
                         if u.op == "output" or self.role((f, u)) not in (*_UNEMITTED, Role.WRITE)
                         and u not in self.write_only[f])

    def refine(self) -> None:
        count = len(set(self.label.values()))
        while True:
            self.label = _renumber({
                m: (self.label[m], self.signature(m)) if self.role(m) is Role.SHARED else self.label[m]
                for m in self.members
            })
            new_count = len(set(self.label.values()))
            if new_count == count:
                return
            count = new_count

    def split_lanes(self) -> bool:
        """Deal members of one fragment that share a class into lanes; True if any were dealt."""
        seen: dict[tuple[int, int], int] = defaultdict(int)
        raw: dict[Member, Hashable] = {}
        dealt = False
        for m in self.members:
            if self.role(m) is Role.CONST:
                raw[m] = (self.label[m], 0)
                continue
            lane = seen[(self.label[m], m[0])]
            seen[(self.label[m], m[0])] += 1
            dealt |= lane > 0
            raw[m] = (self.label[m], lane)
        self.label = _renumber(raw)
        return dealt


def _renumber(raw: dict[Member, Hashable]) -> dict[Member, int]:
    numbers: dict[Hashable, int] = {}
    return {m: numbers.setdefault(v, len(numbers)) for m, v in raw.items()}


def _partition(analyses: list[Analysis], strict: bool, share: str) -> list[NodeClass] | None:
    """The classes of the coarsest partition (relaxed or strict signature), in topological
    order; None when the class graph has a cycle."""
    pool = _Pool(analyses, strict, share)
    pool.initial_labels()
    pool.refine()
    while pool.split_lanes():
        pool.refine()
    groups: dict[int, list[Member]] = defaultdict(list)
    for m in pool.members:
        groups[pool.label[m]].append(m)
    classes = [NodeClass(0, sorted(ms, key=lambda m: m[0]), pool.role(ms[0])) for ms in groups.values()]
    return _topological(classes, analyses)


@dataclass(frozen=True)
class Declined:
    """A region that could be shared but is not worth batching (see ``worth_batching``)."""

    fragments: tuple[int, ...]
    num_nodes: int
    flops_per_row: int
    copied_bytes_per_row: int


def align(analyses: list[Analysis], min_flops_per_byte: float = FLOPS_PER_COPIED_BYTE, share: str = "weights"
          ) -> tuple[list[NodeClass], list[Declined]]:
    """The classes that the realigned graph computes, in an order where inputs come first, and
    the regions declined by the cost rule; ``share`` is how weights must agree (`keys.SHARES`).

    The relaxed partition, or the strict one where the relaxed one is cyclic; then the regions
    not worth batching are dealt back to their fragments until every shared region pays.
    """
    classes = _partition(analyses, False, share) or _partition(analyses, True, share)
    assert classes is not None, "the strict partition is acyclic by construction"
    declined: list[Declined] = []
    while True:
        losing = [segment for segment in shared_regions(classes)
                  if not worth_batching(analyses, classes, segment, min_flops_per_byte)]
        if not losing:
            return classes, declined
        declined += [Declined(r[0].fragments, len(r), _flops(analyses, r), copied_bytes_per_row(analyses, classes, r))
                     for r in losing]
        dealt = {c.index for segment in losing for c in segment}
        singles = [NodeClass(0, [m], c.role) for c in classes if c.index in dealt for m in c.members]
        classes = _topological([c for c in classes if c.index not in dealt] + singles, analyses)


def components(classes: list[NodeClass]) -> list[list[NodeClass]]:
    """Connected components of classes that serve the same fragments (union-find on inputs),
    in order of their first class."""
    parent = {c.index: c.index for c in classes}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_index = {c.index: c for c in classes}
    for c in classes:
        for i in c.inputs:
            if i in by_index and by_index[i].fragments == c.fragments:
                parent[find(i)] = find(c.index)
    groups: dict[int, list[NodeClass]] = defaultdict(list)
    for c in classes:
        groups[find(c.index)].append(c)
    return sorted(groups.values(), key=lambda g: min(c.index for c in g))


def shared_regions(classes: list[NodeClass]) -> list[list[NodeClass]]:
    """Connected components of shared classes that serve one set of fragments."""
    return components([c for c in classes if c.shared])


def copied_bytes_per_row(analyses: list[Analysis], classes: list[NodeClass], region: list[NodeClass]) -> int:
    """Bytes per row that the region's gathers copy: each rows input whose members come from
    more than one class is concatenated (a slice of one class is a view and costs nothing)."""
    class_of = {m: c.index for c in classes for m in c.members}
    total = 0
    for c in region:
        f0, rep = c.members[0]
        for position, a in enumerate(flat_args(rep)):
            if not isinstance(a, fx.Node) or analyses[f0].verdicts[a].role in (Role.CONST, *_UNEMITTED):
                continue
            sources = {class_of[(f, flat_args(n)[position])] for f, n in c.members}
            if len(sources) > 1:
                total += analyses[f0].facts[a].bytes_per_row
    return total


def _flops(analyses: list[Analysis], region: list[NodeClass]) -> int:
    return sum(analyses[c.members[0][0]].facts[c.members[0][1]].flops_per_row for c in region)


def worth_batching(analyses: list[Analysis], classes: list[NodeClass], region: list[NodeClass],
                   min_flops_per_byte: float = FLOPS_PER_COPIED_BYTE) -> bool:
    """The cost rule (see ``FLOPS_PER_COPIED_BYTE``)."""
    return _flops(analyses, region) >= min_flops_per_byte * copied_bytes_per_row(analyses, classes, region)


def _topological(classes: list[NodeClass], analyses: list[Analysis]) -> list[NodeClass] | None:
    """Kahn's algorithm over class dependencies; ties go to the lowest (fragment, graph position).
    None when the classes depend on each other in a cycle."""
    label = {m: i for i, c in enumerate(classes) for m in c.members}
    position = {(f, n): i for f, a in enumerate(analyses) for i, n in enumerate(a.nodes)}
    by_label = dict(enumerate(classes))
    deps: dict[int, set[int]] = {
        l: {label[(f, a)] for f, n in c.members for a in n.all_input_nodes if (f, a) in label} for l, c in by_label.items()
    }
    users: dict[int, list[int]] = defaultdict(list)
    for l, ds in deps.items():
        for d in ds:
            users[d].append(l)
    waiting = {l: len(ds) for l, ds in deps.items()}
    rank = {l: min((m[0], position[m]) for m in c.members) for l, c in by_label.items()}
    ready = [(rank[l], l) for l, w in waiting.items() if w == 0]
    heapq.heapify(ready)
    order: list[NodeClass] = []
    while ready:
        _, l = heapq.heappop(ready)
        c = by_label[l]
        c.index = len(order)
        order.append(c)
        for u in users[l]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (rank[u], u))
    if len(order) != len(classes):
        return None
    for l, c in by_label.items():
        c.inputs = tuple(sorted(by_label[d].index for d in deps[l]))
    return order
