"""Deployments: a plan's partitions packed onto whole devices, each charged for its memory.

A `Plan` says which groups run, on which share, with how many replicas, and which partitions they
run on (`planner.Partition`: one replica of one group, or several groups taking turns); a
`Deployment` says where: every partition lies on one device (no instance spans two), those on a device
fit in its SMs (their shares add up to at most 1) and in its memory, and a device holds no more
partitions than its mechanism allows (48 MPS clients). The number of devices is what a serving
engineer buys; the total share is what the plan asks for; the deployment reports both.

**Memory of a partition**: the weights of every piece its groups run (from each group's
shallowest member's cut to the output; groups taking turns each hold their own), plus activations
for one batch at a time, the largest (`Profile.max_batch`, the batching policy's cap, in rows;
padded to the plan's buckets, the most rows that many requests can pad to, `buckets.most_rows`)
at the largest per-row workspace of those pieces, plus a CUDA context per
partition under MPS or one per device under green contexts (`partitions` module docstring).
Profiles without memory figures (`Piece.weight_bytes` None) and devices without a known memory
are packed on shares alone, and the deployment says that memory was not checked.

**Packing** is first-fit decreasing (largest share first, ties by memory): each partition goes to
the first device it fits on, or to a new one. First-fit decreasing uses at most
``11/9 OPT + 6/9`` bins in one dimension (Dosa, 2007); `Deployment.least_devices` is the lower
bound ``ceil(total share)`` to compare with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..buckets import most_rows
from ..errors import GraftError
from .partitions import Partitioning
from .planner import Partition, Plan
from .profiles import Profile

_EPS = 1e-9


@dataclass(frozen=True)
class DeviceLoad:
    """The partitions on one device (``partition_bytes[i]`` for ``partitions[i]``, None where not
    known), and the memory they take with their contexts."""

    partitions: tuple[Partition, ...]
    partition_bytes: tuple[int | None, ...]
    memory_bytes: int | None
    models: tuple[int, ...] = ()  # which of the deployed plans each partition belongs to

    @property
    def share(self) -> float:
        return sum(p.share for p in self.partitions)


@dataclass(frozen=True)
class Deployment:
    """A plan placed on whole devices of ``partitioning``'s kind."""

    partitioning: Partitioning
    devices: tuple[DeviceLoad, ...]
    memory_checked: bool

    @property
    def gpus(self) -> int:
        """Devices used."""
        return len(self.devices)

    @property
    def total_share(self) -> float:
        return sum(d.share for d in self.devices)

    @property
    def least_devices(self) -> int:
        """A lower bound on the devices any packing of these partitions needs."""
        return math.ceil(self.total_share - _EPS)

    def __str__(self) -> str:
        name = self.partitioning.describe
        lines = []
        several = any(m for d in self.devices for m in d.models)
        for i, d in enumerate(self.devices):
            models = d.models or (0,) * len(d.partitions)
            prefix = [f"m{m}." if several else "" for m in models]
            parts = ", ".join("+".join(f"{pre}g{g}" for g in p.groups) + f":{name(p.share)}"
                              for pre, p in zip(prefix, d.partitions))
            memory = "" if d.memory_bytes is None else f", {d.memory_bytes / 2**30:.1f} GiB"
            lines.append(f"device {i} ({name(d.share)}{memory}): {parts}")
        return "\n".join(lines)


def memory_bytes(profile: Profile, plan: Plan, partition: Partition) -> int | None:
    """Device memory of ``partition`` of ``plan``, context excluded (None: the profile has no
    memory figures); see the module docstring."""
    pieces = [p for g in partition.groups for p in profile.pieces[min(plan.groups[g].fragments):]]
    if any(p.weight_bytes is None or p.workspace_bytes is None for p in pieces):
        return None
    rows = profile.max_batch if plan.buckets is None else max(
        most_rows(profile.max_batch, plan.buckets, len(plan.groups[g].fragments)) for g in partition.groups)
    return sum(p.weight_bytes for p in pieces) + rows * max(p.workspace_bytes for p in pieces)


def deploy(plan: Plan, profile: Profile) -> Deployment:
    """Pack every partition of ``plan`` onto devices (first-fit decreasing); see `deploy_all`."""
    return deploy_all([(plan, profile)])


def deploy_all(plans: Sequence[tuple[Plan, Profile]]) -> Deployment:
    """Pack the partitions of several plans (several models served at once, each plan on its
    model's profile) onto one set of devices, first-fit decreasing. `DeviceLoad.models[i]` is the
    index in ``plans`` of the plan that ``partitions[i]`` belongs to.

    Raises GraftError when the plans partition different devices or mechanisms, or when one
    partition alone does not fit on a device (its memory with its context exceeds the device's).
    """
    kinds = {p.partitioning for p, _ in plans}
    if None in kinds or len(kinds) != 1:
        raise GraftError(f"plans on partitionings {sorted(map(str, kinds))}: expected one, made by planner.plan")
    part = kinds.pop()
    device_memory = part.device.memory_bytes
    items = [(m, p, memory_bytes(profile, plan, p)) for m, (plan, profile) in enumerate(plans) for p in plan.partitions]
    checked = device_memory is not None and all(b is not None for _, _, b in items)
    items.sort(key=lambda item: (-item[1].share, -(item[2] or 0), item[0], item[1].groups))
    bins: list[list[tuple[int, Partition, int | None]]] = []
    for item in items:
        if checked and _memory(part, [item]) > device_memory:
            raise GraftError(f"groups {list(item[1].groups)} need {_memory(part, [item]) / 2**30:.1f} GiB on one "
                             f"{part.device.name}, which has {device_memory / 2**30:.1f} GiB: expected "
                             "partitions that fit on one device (a smaller largest batch, or a larger device)")
        for b in bins:
            if _fits(part, b + [item], checked):
                b.append(item)
                break
        else:
            bins.append([item])
    devices = tuple(DeviceLoad(tuple(p for _, p, _ in b), tuple(m for _, _, m in b),
                               _memory(part, b) if checked else None, tuple(m for m, _, _ in b)) for b in bins)
    return Deployment(part, devices, checked)


def _memory(part: Partitioning, items: list[tuple[int, Partition, int | None]]) -> int:
    contexts = 1 if part.shared_context else len(items)
    return sum(b or 0 for _, _, b in items) + contexts * part.context_bytes


def _fits(part: Partitioning, items: list[tuple[int, Partition, int | None]], checked: bool) -> bool:
    if sum(p.share for _, p, _ in items) > 1 + _EPS:
        return False
    if part.max_partitions is not None and len(items) > part.max_partitions:
        return False
    return not checked or _memory(part, items) <= part.device.memory_bytes
