"""What a realignment did: segments, the FLOPs they batch, and what stayed private and why."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from .align import Declined, NodeClass, components, flat_args
from .analysis import Analysis
from .capture import fetch_attr, layer_name
from .keys import same_values
from .separable import Role


@dataclass(frozen=True)
class Segment:
    """A maximal connected run of the realigned graph that serves one fixed set of fragments."""

    fragments: tuple[int, ...]
    num_nodes: int
    flops_per_row: int
    by_structure: int = 0  # of its nodes, those whose fragments' weights differ (share="structure")

    @property
    def batched(self) -> bool:
        return len(self.fragments) > 1


@dataclass(frozen=True)
class Unshared:
    """A node kept in its fragment's private part, and why; ``node`` is its readable layer name
    (``"layer4.2.bn3 (batch_norm)"``)."""

    fragment: int
    node: str
    reason: str


@dataclass(frozen=True)
class Plan:
    num_fragments: int
    segments: tuple[Segment, ...]
    unshared: tuple[Unshared, ...]
    declined: tuple[Declined, ...] = ()

    @property
    def batched_flops_fraction(self) -> float:
        """Share of the FLOPs of running every fragment separately that now run batched."""
        total = sum(s.flops_per_row * len(s.fragments) for s in self.segments)
        batched = sum(s.flops_per_row * len(s.fragments) for s in self.segments if s.batched)
        return batched / total if total else 0.0

    def __str__(self) -> str:
        lines = [
            f"realigned {self.num_fragments} fragments into {len(self.segments)} segments; "
            f"{100 * self.batched_flops_fraction:.1f}% of FLOPs run batched",
            f"{'segment':>7}  {'fragments':<24} {'nodes':>5}  {'MFLOP/row':>10}"
            + ("  weights differ in" if any(s.by_structure for s in self.segments) else ""),
        ]
        for i, s in enumerate(self.segments):
            frags = ",".join(map(str, s.fragments))
            lines.append(f"{i:>7}  {frags:<24} {s.num_nodes:>5}  {s.flops_per_row / 1e6:>10.2f}"
                         + (f"  {s.by_structure} node{'s' * (s.by_structure != 1)}" if s.by_structure else ""))
        if self.unshared:
            lines.append(f"not shared ({len(self.unshared)} nodes):")
            lines += [f"  fragment {u.fragment}: {u.node}: {u.reason}" for u in self.unshared]
        for d in self.declined:
            lines.append(f"not worth batching: {d.num_nodes} nodes of fragments {','.join(map(str, d.fragments))} "
                         f"({d.flops_per_row / 1e6:.2f} MFLOP/row against {d.copied_bytes_per_row} bytes/row copied)")
        return "\n".join(lines)


def _weights_differ(analyses: list[Analysis], c: NodeClass) -> bool:
    """Whether the members of class ``c`` read weights that differ (a class keyed by structure)."""
    f0, rep = c.members[0]
    for i, a in enumerate(flat_args(rep)):
        if isinstance(a, fx.Node) and a.op == "get_attr" and analyses[f0].verdicts[a].role is Role.CONST:
            tensors = [fetch_attr(analyses[f].gm, flat_args(n)[i].target) for f, n in c.members]
            if any(t is not tensors[0] and not same_values(t, tensors[0]) for t in tensors):
                return True
    return False


def make_plan(analyses: list[Analysis], classes: list[NodeClass], declined: list[Declined] = ()) -> Plan:
    """Segments are the components of non-constant classes; inputs join a fragment's first nodes."""
    segments = []
    for group in components([c for c in classes if c.role is not Role.CONST]):
        running = [c for c in group if c.role is not Role.INPUT]
        if running:
            flops = sum(analyses[f].facts[n].flops_per_row for c in running for f, n in c.members[:1])
            differ = sum(_weights_differ(analyses, c) for c in running if c.shared)
            segments.append(Segment(running[0].fragments, len(running), flops, differ))
    unshared = tuple(
        Unshared(f, layer_name(n), v.reason)
        for f, a in enumerate(analyses) for n, v in a.verdicts.items()
        if v.role in (Role.PRIVATE, Role.PRIVATE_ROWS) and v.reason
    )
    return Plan(len(analyses), tuple(segments), unshared, tuple(declined))
