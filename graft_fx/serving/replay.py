"""Replay: a request stream served by plans on the virtual clock.

A `Run` is what happens to every request of a `Stream` when a sequence of plans (`Epoch`s) serves
it: each request is served by the plan in force when it arrives, an instance drains its own queue
when its plan is replaced, and a policy's share is the time average of its plans'
(`Run.total_share`).

Each instance (one replica of one group) is a `BatchQueue` on its plan's partition, served by
`run_offline` when it has the partition to itself and by `run_shared` when several groups take
turns on it (time sharing); a group's requests go to its replicas in turn, in arrival order
(`routing.Router`, the rule the runtime follows too). Instances on separate shares do not slow each
other (SM partitions do; memory bandwidth is shared on a real GPU, which the profile's per-share
measurements include only for one tenant at a time). Every batch takes exactly the profile's
latency for its mix (`pricing.group_latency`; with ``buckets``, at its padded rows), so a request
is answered on time or dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .batching import run_offline, run_shared
from .planner import Plan
from .pricing import group_latency
from .profiles import Profile
from .requests import Request
from .routing import Router
from .stream import Stream


@dataclass(frozen=True)
class Epoch:
    """``plan`` serves the requests that arrive from ``start_s`` until the next epoch starts."""

    start_s: float
    plan: Plan


@dataclass(frozen=True)
class Run:
    """Plans simulated: ``finish_s[i]`` is when request i was answered (NaN: dropped); the
    epochs cover ``[epochs[0].start_s, end_s)``."""

    epochs: tuple[Epoch, ...]
    finish_s: np.ndarray
    end_s: float

    @property
    def plan(self) -> Plan:
        """The plan in force longest."""
        spans = np.diff([e.start_s for e in self.epochs] + [self.end_s])
        return self.epochs[int(np.argmax(spans))].plan

    @property
    def total_share(self) -> float:
        """The epochs' total shares, averaged over time (a single plan's total share)."""
        if len(self.epochs) == 1:
            return self.epochs[0].plan.total_share
        spans = np.diff([e.start_s for e in self.epochs] + [self.end_s])
        shares = [e.plan.total_share for e in self.epochs]
        return float(np.dot(spans, shares) / spans.sum())

    def on_time(self, stream: Stream) -> np.ndarray:
        return ~np.isnan(self.finish_s) & (self.finish_s <= stream.deadline_s)


def run_plan(stream: Stream, profile: Profile, the_plan: Plan, buckets: Sequence[int] | None = None) -> Run:
    """Serve ``stream`` with one instance per replica of each group of ``the_plan``."""
    return run_epochs(stream, profile, [Epoch(0.0, the_plan)], buckets)


def run_epochs(stream: Stream, profile: Profile, epochs: Sequence[Epoch],
               buckets: Sequence[int] | None = None) -> Run:
    """Serve each request on the plan in force when it arrives: one `Router` per epoch sends a
    group's requests to its replicas' partitions in turn, in arrival order; a partition of one
    group is one `BatchQueue` on its own executor (`run_offline`), a time-shared one runs its
    groups' queues in turns (`run_shared`). An instance drains its own queue when its epoch ends.
    With ``buckets`` every batch takes the latency of its padded rows (`pricing.group_latency`)."""
    finish = np.full(len(stream.requests), np.nan)
    starts = [e.start_s for e in epochs]
    routers = [Router(e.plan) for e in epochs]
    routed: dict[tuple[int, int, int], list[Request]] = {}  # (epoch, group, partition) -> its requests
    for r in stream.requests:
        k = max(bisect.bisect_right(starts, r.arrival_s) - 1, 0)
        route = routers[k].route(r.fragment)
        if route is not None:  # a type without a plan (none of its requests attainable) drops
            routed.setdefault((k, *route), []).append(r)
    for k, (epoch, router) in enumerate(zip(epochs, routers)):
        turns: dict[int, list] = {}  # partition -> (requests, latency) of each of its groups
        for g, places in router.seats.items():
            replicas = [routed.get((k, g, p), []) for p in places]
            # priced on the types present (a one-type batch takes the fast path), else on the group's
            present = (sorted({r.fragment for requests in replicas for r in requests})
                       or list(epoch.plan.groups[g].fragments))
            latency = group_latency(profile, present, epoch.plan.partitions[places[0]].share, buckets)
            for p, requests in zip(places, replicas):
                turns.setdefault(p, []).append((requests, latency))
        for queues in turns.values():
            outcomes = ([run_offline(*queues[0], profile.max_batch)] if len(queues) == 1
                        else run_shared(queues, profile.max_batch))
            for outcome in outcomes:
                for request_id, t in outcome.completed_s().items():
                    finish[request_id] = t
    return Run(tuple(epochs), finish, stream.end_s)
