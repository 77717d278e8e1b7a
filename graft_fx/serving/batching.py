"""Deadline-aware batch formation for one group of fragment types, on an abstract clock.

One `BatchQueue` serves one group (the fragment types that one instance runs as one batch). It is
an event-driven state machine: it owns no clock, thread or executor. Its caller (the simulator, or
the runtime) owns those, calls `arrive` for each request, and calls `poll` when a request arrived,
when the executor became free, and at `next_wakeup`; `poll` answers which batch to start now and
which requests it dropped. The same code therefore runs on virtual and on wall-clock time.

The policy plans with the group's latency profile, ``latency(batch)``: the service time of a batch
(a sequence of requests), positive and never smaller for a batch that holds more requests. It sees
the requests, not just their number, because a realigned group's batch costs what its mix costs: a
request cut early runs more pieces than one cut late (`Profile.batch_s`). Below, ``latency(k)``
is short for the latency of the first k queued requests. With ``start = max(now, busy_until)``
the earliest moment the executor can take a new batch:

- **Earliest deadline first.** Requests wait in (deadline, arrival, id) order. The *candidate* is
  the longest prefix of that order, at most ``max_batch`` long, that meets every member's deadline
  when started at ``start``; the prefix's tightest deadline is its head's, so with k members it
  fits when ``start <= head.deadline_s - latency(k)``. That bound is the candidate's *latest start*.
- **Dispatch at the latest start.** A batch is never started while the executor is busy. When it
  is free the candidate starts now if waiting cannot make it larger: it is full (``max_batch``),
  or it already leaves a queued request out (the next request would miss the head's deadline, and
  the bound only tightens with time). Otherwise every queued request rides in the candidate, and
  the queue waits for arrivals until the latest start. Waiting spends latency slack, which the
  deadline does not reward, on larger batches, which throughput does; and since we wait only while
  nobody queued is left out, waiting never costs a queued request its deadline. ``eager=True``
  starts the candidate whenever the executor is free instead: work-conserving, for baselines.
- **Drop early.** A request is dropped as soon as it could not meet its deadline even alone:
  ``start > deadline_s - latency((request,))``. That is checked at every poll, and again just after a batch
  starts, against the finish the profile predicts for it, so executor time is never spent on a
  request that cannot make it and the client hears at once. A request whose budget was below
  its latency alone from its arrival is dropped as ``"hopeless"``; one that lost its slack in the
  queue or behind a busy executor as ``"expired"``.

Feasibility is always tested as ``start <= deadline - latency(n)``, never as
``start + latency(n) <= deadline``: the latest start is computed by the same subtraction, so a
batch started exactly at its latest start is feasible by construction, not by rounding luck. Drops
are final and judged on the profile; a caller whose executor finishes early still passes the true
``busy_until`` to the next poll. `run_offline` is the reference driver on a virtual clock.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import GraftError
from .requests import Request

HOPELESS = "hopeless"  # budget below its latency alone from the moment it arrived
EXPIRED = "expired"    # could have made it at arrival, but queueing used up its slack

Latency = Callable[[Sequence[Request]], float]  # a batch's service time


@dataclass(frozen=True)
class Drop:
    """``request`` was dropped at ``at_s`` because it could no longer meet its deadline."""

    request: Request
    at_s: float
    reason: str  # HOPELESS or EXPIRED


@dataclass(frozen=True)
class Decision:
    """What a poll decided: the batch to start now (EDF order, maybe empty) and the drops."""

    start: tuple[Request, ...] = ()
    dropped: tuple[Drop, ...] = ()


@dataclass
class Stats:
    """Counters a queue keeps; ``arrived == dispatched + dropped + len(pending)`` at all times."""

    arrived: int = 0
    dispatched: int = 0
    drops: Counter[str] = field(default_factory=Counter)        # reason -> count
    batch_sizes: Counter[int] = field(default_factory=Counter)  # size -> number of batches

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())


class BatchQueue:
    """The EDF queue of one group; see the module docstring for the policy."""

    def __init__(self, latency: Latency, max_batch: int, eager: bool = False):
        if max_batch < 1:
            raise GraftError(f"max_batch must be at least 1, got {max_batch}")
        self.latency = latency
        self.max_batch = max_batch
        self.eager = eager
        self.stats = Stats()
        self._queue: list[Request] = []  # sorted: EDF order
        self._members: set[Request] = set()  # the same requests, for membership
        self._alone: list[tuple[float, Request]] = []  # heap of (latest start alone, request);
        # entries of requests that left the queue stay until they reach the top
        self._prefix: dict[int, float] = {}  # k -> latency of the first k queued requests
        self._now = -math.inf
        self._busy_until = -math.inf     # as of the last poll, or the batch that poll started

    @property
    def pending(self) -> tuple[Request, ...]:
        """The queued requests in EDF order."""
        return tuple(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def arrive(self, request: Request, now: float) -> None:
        """Queue ``request``; the caller polls before ``now`` moves on."""
        self._advance(now)
        bisect.insort(self._queue, request)
        self._prefix.clear()
        self._members.add(request)
        heapq.heappush(self._alone, (request.deadline_s - self.latency((request,)), request))
        self.stats.arrived += 1

    def poll(self, now: float, busy_until: float) -> Decision:
        """Drop what can no longer make it, and start the candidate batch if its time has come.

        ``busy_until`` is when the executor finishes its current batch (at or before ``now`` when
        it is free). A batch started here runs until ``now + latency(batch)`` as far as the
        queue knows, until the next poll says otherwise.
        """
        self._advance(now)
        dropped = self._drop(max(now, busy_until), now)
        batch: tuple[Request, ...] = ()
        if now >= busy_until and self._queue and self._dispatch_time(now) <= now:
            batch = self._dispatch()
            busy_until = now + self.latency(batch)
            dropped += self._drop(busy_until, now)
        self._busy_until = busy_until
        return Decision(batch, dropped)

    def next_wakeup(self, now: float) -> float | None:
        """When to poll next if nothing arrives: the earliest time at which a poll would act.

        Right after a poll it is later than ``now`` (on a finite clock): a poll leaves nothing due.
        It is ``now`` only when a request that can no longer make it was queued without a poll.
        """
        if not self._queue:
            return None
        start = max(now, self._busy_until)
        while self._alone[0][1] not in self._members:
            heapq.heappop(self._alone)
        if start > self._alone[0][0]:
            return now
        return self._dispatch_time(start)

    def _advance(self, now: float) -> None:
        if now < self._now:
            raise GraftError(f"the clock went backwards: {now} after {self._now}")
        self._now = now

    def _drop(self, start: float, now: float) -> tuple[Drop, ...]:
        """Drop the queued requests that cannot meet their deadline when started at ``start``:
        those whose latest start alone is before it.

        Latency alone differs between fragment types, so they need not be a prefix of EDF order;
        a heap on the latest start alone finds them without scanning the queue.
        """
        drops = []
        while self._alone and start > self._alone[0][0]:
            latest, r = heapq.heappop(self._alone)
            if r in self._members:
                drops.append(Drop(r, now, HOPELESS if r.arrival_s > latest else EXPIRED))
        if not drops:
            return ()
        gone = {d.request for d in drops}
        self._members -= gone
        self._queue = [r for r in self._queue if r not in gone]
        self._prefix.clear()
        self.stats.drops.update(d.reason for d in drops)
        return tuple(drops)

    def _candidate_size(self, start: float) -> int:
        """The longest EDF prefix that meets its head's deadline from ``start`` (head feasible).

        A longer prefix never takes less time, so the fitting prefixes are the ones up to some
        length: binary search for it.
        """
        deadline = self._queue[0].deadline_s
        lo, hi = 1, min(self.max_batch, len(self._queue))  # prefix lo fits; find the longest
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if start <= deadline - self._prefix_s(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _dispatch_time(self, start: float) -> float:
        """When the candidate at ``start`` starts if nothing arrives: ``start``, or its latest
        start while only arrivals could still enlarge it."""
        k = self._candidate_size(start)
        can_grow = k == len(self._queue) and k < self.max_batch
        if self.eager or not can_grow:
            return start
        return self._queue[0].deadline_s - self._prefix_s(k)

    def _prefix_s(self, k: int) -> float:
        """The latency of the first ``k`` queued requests, remembered until the queue changes."""
        if k not in self._prefix:
            self._prefix[k] = self.latency(self._queue[:k])
        return self._prefix[k]

    def _dispatch(self) -> tuple[Request, ...]:
        batch = tuple(self._queue[:self._candidate_size(self._now)])
        del self._queue[:len(batch)]
        self._prefix.clear()
        self._members.difference_update(batch)
        self.stats.dispatched += len(batch)
        self.stats.batch_sizes[len(batch)] += 1
        return batch


@dataclass(frozen=True)
class Batch:
    """A batch that `run_offline` started at ``start_s`` and that finished at ``finish_s``."""

    start_s: float
    requests: tuple[Request, ...]
    finish_s: float


@dataclass(frozen=True)
class Outcome:
    """Every request's fate in a `run_offline` run: in exactly one batch, or in ``drops``."""

    batches: tuple[Batch, ...]
    drops: tuple[Drop, ...]
    stats: Stats

    def completed_s(self) -> dict[int, float]:
        """Request id -> when its batch finished."""
        return {r.id: b.finish_s for b in self.batches for r in b.requests}


def run_offline(requests: Iterable[Request], latency: Latency, max_batch: int,
                eager: bool = False) -> Outcome:
    """Serve ``requests`` from one `BatchQueue` on a virtual clock whose batches take exactly
    ``latency(batch)``; polls at every arrival, every executor-free time and every wakeup."""
    arrivals = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    queue = BatchQueue(latency, max_batch, eager)
    batches: list[Batch] = []
    drops: list[Drop] = []
    busy_until, i = -math.inf, 0
    now = arrivals[0].arrival_s if arrivals else 0.0
    while i < len(arrivals) or len(queue):
        while i < len(arrivals) and arrivals[i].arrival_s <= now:
            queue.arrive(arrivals[i], now)
            i += 1
        decision = queue.poll(now, busy_until)
        drops += decision.dropped
        if decision.start:
            busy_until = now + latency(decision.start)
            batches.append(Batch(now, decision.start, busy_until))
        events = [queue.next_wakeup(now), busy_until if busy_until > now else None,
                  arrivals[i].arrival_s if i < len(arrivals) else None]
        later = min((t for t in events if t is not None), default=math.inf)
        assert later > now or decision.start, f"the batching policy stalled at {now}"
        now = later
    return Outcome(tuple(batches), tuple(drops), queue.stats)
