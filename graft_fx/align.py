"""The partition of all fragments' nodes into classes that run as one node each.

Put the nodes of every fragment in one pool. A *class* is a set of nodes that the realigned graph
computes once, on the concatenated rows of its members' fragments. The partition is the coarsest
one in which the members of a class

  (a) have equal layer keys (``keys.py``),
  (b) are batch-separable (role SHARED), unless the class is a single node,
  (c) come from distinct fragments, and
  (d) have the same *users signature*: the set of (class of user, argument position) pairs, with
      the fragment's output as a user too.

Condition (d) makes sharing grow backwards from the outputs, which is exactly the shared suffix,
and it is what makes gathering possible: every member of a class feeds the same user classes at
the same positions, so a user class's input is the concatenation of whole classes (or of
contiguous row ranges of them) and never needs rows from a class that does not serve it. It
handles DAGs (residual skips, branches, concatenations) with no special cases.

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


class _Pool:
    def __init__(self, analyses: list[Analysis]):
        self.analyses = analyses
        self.members: list[Member] = [
            (f, n) for f, a in enumerate(analyses) for n in a.nodes if a.verdicts[n].role is not Role.FOLDED
        ]
        self.label: dict[Member, int] = {}
        self.uses = {m: _uses(m[1]) for m in self.members if self.role(m) is Role.SHARED}

    def role(self, m: Member) -> Role:
        return self.analyses[m[0]].verdicts[m[1]].role

    def initial_labels(self) -> None:
        keys = KeyMaker()
        raw: dict[Member, Hashable] = {}
        for f, a in enumerate(self.analyses):
            const_ids: dict[fx.Node, int] = {}
            for n in a.nodes:
                role = a.verdicts[n].role
                if role is Role.CONST:
                    const_ids[n] = keys.const_number(keys.key(a.gm, n, a.facts, a.verdicts, const_ids))
                    raw[(f, n)] = ("const", const_ids[n])
                elif role is Role.SHARED:
                    raw[(f, n)] = ("shared", keys.key(a.gm, n, a.facts, a.verdicts, const_ids))
                elif role is not Role.FOLDED:
                    raw[(f, n)] = ("single", f, n)
        self.label = _renumber(raw)

    def signature(self, m: Member) -> frozenset:
        f, node = m
        sig = {(self.label[(f, u)] if u.op != "output" else "output", i) for u, i in self.uses[m]
               if u.op == "output" or self.role((f, u)) is not Role.FOLDED}
        return frozenset(sig)

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


def align(analyses: list[Analysis]) -> list[NodeClass]:
    """The classes of the coarsest valid partition, in an order where inputs come first."""
    pool = _Pool(analyses)
    pool.initial_labels()
    pool.refine()
    while pool.split_lanes():
        pool.refine()
    groups: dict[int, list[Member]] = defaultdict(list)
    for m in pool.members:
        groups[pool.label[m]].append(m)
    classes = [NodeClass(0, sorted(ms, key=lambda m: m[0]), pool.role(ms[0])) for ms in groups.values()]
    position = {(f, n): i for f, a in enumerate(analyses) for i, n in enumerate(a.nodes)}
    return _topological(classes, pool.label, position)


def _topological(classes: list[NodeClass], label: dict[Member, int], position: dict[Member, int]) -> list[NodeClass]:
    """Kahn's algorithm over class dependencies; ties go to the lowest (fragment, graph position)."""
    by_label = {label[c.members[0]]: c for c in classes}
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
    assert len(order) == len(classes), "class graph has a cycle"
    for l, c in by_label.items():
        c.inputs = tuple(sorted(by_label[d].index for d in deps[l]))
    return order
