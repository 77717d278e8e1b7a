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
  the queue waits for arrivals until the latest start (less a lead of ``lead_s`` plus
  ``lead_fraction`` of the batch's latency: a wall-clock caller that wakes a little late, spends
  time of its own on a batch, or runs a batch slower than priced starts it that much early,
  where the virtual clock of the simulator, whose batches take exactly their price, needs no
  lead). Waiting spends latency slack, which the
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
``busy_until`` to the next poll. `run_offline` is the reference driver on a virtual clock, and
`run_shared` drives several groups' queues that take turns on one executor (a time-shared
partition).
"""

from __future__ import annotations

import bisect
import heapq
import math
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

from ..errors import GraftError
from .requests import Request

HOPELESS = "hopeless"  # budget below its latency alone from the moment it arrived
EXPIRED = "expired"    # could have made it at arrival, but queueing used up its slack

Latency = Callable[[Sequence[Request]], float]  # a batch's service time

# A request's key: the tuple of the fields `Request` orders, compares and hashes by, so keys
# order, compare and hash exactly as their requests do, at the speed of plain tuples.
_key = operator.attrgetter(*(f.name for f in fields(Request) if f.compare))


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


_NOTHING = Decision()  # what most polls decide


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
    """The EDF queue of one group; see the module docstring for the policy.

    A simulator replays millions of requests through these queues, so the bookkeeping is kept
    cheap without changing a decision:

    - The queue is kept twice, in the same EDF order: the requests, and their *keys*, the tuples
      `Request` orders and compares by (`_key`). Inserting and deleting bisect the keys, which
      compare as plain tuples, where the requests would compare through Python-level dataclass
      methods; the same goes for the membership set and the drop heap, which hold keys. Keys
      order, compare and hash exactly as their requests do, so every decision is the same.
    - ``latency(k)`` is remembered per k, and forgotten only for the prefixes a change touched:
      an arrival inserted at position i, or a drop at i, leaves the first i requests, and so
      every ``latency(k)`` with ``k <= i``, as they were. The candidate's binary search probes
      the same k as it would without the memory; the memory only saves calling ``latency``
      again on a prefix it has already priced.
    """

    def __init__(self, latency: Latency, max_batch: int, eager: bool = False, lead_s: float = 0.0,
                 lead_fraction: float = 0.0):
        if max_batch < 1:
            raise GraftError(f"max_batch must be at least 1, got {max_batch}")
        if not (lead_s >= 0 and lead_fraction >= 0):
            raise GraftError(f"lead_s {lead_s} and lead_fraction {lead_fraction}: expected both at least 0")
        self.latency = latency
        self.max_batch = max_batch
        self.eager = eager
        self.lead_s = lead_s
        self.lead_fraction = lead_fraction
        self.stats = Stats()
        self._queue: list[Request] = []  # sorted: EDF order
        self._keys: list[tuple] = []  # their keys, in the same order
        self._members: set[tuple] = set()  # the same keys, for membership
        self._alone: list[tuple[float, tuple, Request]] = []  # heap of (latest start alone, key,
        # request); entries of requests that left the queue stay until they reach the top
        self._prefix: dict[int, float] = {}  # k -> latency of the first k queued requests
        self._batch_s = 0.0  # latency of the batch the last poll started
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
        key = _key(request)
        i = bisect.bisect_right(self._keys, key)  # after equal keys, as `bisect.insort` does
        self._keys.insert(i, key)
        self._queue.insert(i, request)
        if i < len(self._queue) - 1:  # not last: the prefixes longer than i changed
            self._forget(i)
        self._members.add(key)
        heapq.heappush(self._alone, (request.deadline_s - self.latency((request,)), key, request))
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
            busy_until = now + self._batch_s
            dropped += self._drop(busy_until, now)
        self._busy_until = busy_until
        return Decision(batch, dropped) if batch or dropped else _NOTHING

    def next_wakeup(self, now: float) -> float | None:
        """When to poll next if nothing arrives: the earliest time at which a poll would act.

        Right after a poll it is later than ``now`` (on a finite clock): a poll leaves nothing due.
        It is ``now`` only when a request that can no longer make it was queued without a poll.
        """
        if not self._queue:
            return None
        start = max(now, self._busy_until)
        alone, members = self._alone, self._members
        while alone[0][1] not in members:
            heapq.heappop(alone)
        if start > alone[0][0]:
            return now
        return self._dispatch_time(start)

    def admits(self, request: Request, start: float) -> bool:
        """Admission control: whether ``request`` can join the queue without a deadline lost.

        The queue is run, on paper, as the policy runs it when it cannot wait: batch after batch
        from ``start + lead_s`` (the executor may free up late by as much as a waiting batch may
        start early), each batch the candidate, the longest EDF prefix of at most ``max_batch``
        that meets its head's deadline, and each taking ``lead_fraction`` longer than its price
        (`_lost`), so that what is admitted survives the slowdown a waiting batch is led for. A head that fits in no batch is lost. The
        request is admitted when, with it in its EDF place, it is not lost and nobody is lost who
        would not be without it (requests already doomed, which the next poll drops, do not count
        against it). A refused request would cost itself or a queued request its deadline:
        refusing it at the door answers its client at once, where queueing it would answer late
        or drop someone later.
        """
        start += self.lead_s
        i = bisect.bisect_right(self._keys, _key(request))
        lost, _ = self._paper(self._queue[:i] + [request] + self._queue[i:], start)
        if not lost:
            return True
        return request.id not in lost and lost <= self._paper(self._queue, start)[0]

    def backlog_s(self) -> float:
        """How long the queued requests keep the executor busy, run as `admits` runs them."""
        return self._paper(self._queue, 0.0)[1]

    def reprice(self) -> None:
        """``latency`` now answers differently (the runtime's `pace.Pace` changed): forget the
        remembered prefix latencies and recompute each queued request's latest start alone, so
        that every later decision uses the new prices. A running batch keeps the price it
        started with."""
        self._prefix.clear()
        self._alone = [(r.deadline_s - self.latency((r,)), k, r) for k, r in zip(self._keys, self._queue)]
        heapq.heapify(self._alone)

    def _paper(self, order: list[Request], start: float) -> tuple[set[int], float]:
        """The ids of the requests of ``order`` (EDF order) that a back-to-back run of candidate
        batches from ``start``, each ``lead_fraction`` slower than priced, loses (heads that
        cannot meet their deadline even alone), and when that run ends."""
        lost: set[int] = set()
        slow = 1.0 + self.lead_fraction
        t, j, n = start, 0, len(order)
        while j < n:
            deadline = order[j].deadline_s
            lo, hi = 0, min(self.max_batch, n - j)  # the longest prefix that fits: binary search
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if t <= deadline - slow * self.latency(order[j:j + mid]):
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:
                lost.add(order[j].id)
                j += 1
            else:
                t += slow * self.latency(order[j:j + lo])
                j += lo
        return lost, t

    def _advance(self, now: float) -> None:
        if now < self._now:
            raise GraftError(f"the clock went backwards: {now} after {self._now}")
        self._now = now

    def _forget(self, i: int) -> None:
        """The queue changed at position ``i``: forget the latency of the prefixes longer than i."""
        if self._prefix:
            self._prefix = {k: s for k, s in self._prefix.items() if k <= i}

    def _drop(self, start: float, now: float) -> tuple[Drop, ...]:
        """Drop the queued requests that cannot meet their deadline when started at ``start``:
        those whose latest start alone is before it.

        Latency alone differs between fragment types, so they need not be a prefix of EDF order;
        a heap on the latest start alone finds them without scanning the queue.
        """
        alone = self._alone
        if not alone or not start > alone[0][0]:
            return ()
        members = self._members
        drops = []
        while alone and start > alone[0][0]:
            latest, key, r = heapq.heappop(alone)
            if key in members:
                drops.append(Drop(r, now, HOPELESS if r.arrival_s > latest else EXPIRED))
        if not drops:
            return ()
        gone = {_key(d.request) for d in drops}
        members -= gone
        keys, queue = self._keys, self._queue
        first = len(keys)  # the first position that changed
        for key in gone:
            lo = bisect.bisect_left(keys, key)
            hi = bisect.bisect_right(keys, key, lo)
            if hi == lo or any(k != key for k in keys[lo:hi]):  # keys that do not order (a
                # NaN) mislead bisection: filter the whole queue instead
                kept = [j for j, k in enumerate(keys) if k not in gone]
                first = min(first, next((j for j, k in enumerate(keys) if k in gone), first))
                self._keys, self._queue = [keys[j] for j in kept], [queue[j] for j in kept]
                break
            del keys[lo:hi], queue[lo:hi]
            first = min(first, lo)
        self._forget(first)
        self.stats.drops.update(d.reason for d in drops)
        return tuple(drops)

    def _candidate_size(self, start: float) -> int:
        """The longest EDF prefix that meets its head's deadline from ``start`` (head feasible).

        A longer prefix never takes less time, so the fitting prefixes are the ones up to some
        length: binary search for it.
        """
        queue, prefix = self._queue, self._prefix
        deadline = queue[0].deadline_s
        lo, hi = 1, min(self.max_batch, len(queue))  # prefix lo fits; find the longest
        while lo < hi:
            mid = (lo + hi + 1) // 2
            s = prefix.get(mid)  # _prefix_s(mid), inlined: this is the simulator's inner loop
            if s is None:
                s = prefix[mid] = self.latency(queue[:mid])
            if start <= deadline - s:
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
        batch_s = self._prefix_s(k)
        return max(start, self._queue[0].deadline_s - batch_s - self.lead_s - self.lead_fraction * batch_s)

    def _prefix_s(self, k: int) -> float:
        """The latency of the first ``k`` queued requests, remembered until they change."""
        s = self._prefix.get(k)
        if s is None:
            s = self._prefix[k] = self.latency(self._queue[:k])
        return s

    def _dispatch(self) -> tuple[Request, ...]:
        k = self._candidate_size(self._now)
        batch = tuple(self._queue[:k])
        self._batch_s = self._prefix_s(k)
        self._members.difference_update(self._keys[:k])
        del self._queue[:k], self._keys[:k]
        self._prefix.clear()
        self.stats.dispatched += k
        self.stats.batch_sizes[k] += 1
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
    busy_until, i, n = -math.inf, 0, len(arrivals)
    now = arrivals[0].arrival_s if arrivals else 0.0
    while i < n or queue._queue:
        while i < n and arrivals[i].arrival_s <= now:
            queue.arrive(arrivals[i], now)
            i += 1
        decision = queue.poll(now, busy_until)
        if decision.dropped:
            drops += decision.dropped
        if decision.start:
            busy_until = queue._busy_until  # now + latency(decision.start), as the poll priced it
            batches.append(Batch(now, decision.start, busy_until))
        # the earliest of the next wakeup, the executor freeing and the next arrival
        later = queue.next_wakeup(now)
        if later is None:
            later = math.inf
        if now < busy_until < later:
            later = busy_until
        if i < n and arrivals[i].arrival_s < later:
            later = arrivals[i].arrival_s
        assert later > now or decision.start, f"the batching policy stalled at {now}"
        now = later
    return Outcome(tuple(batches), tuple(drops), queue.stats)


class Turns:
    """The queues of the groups that take turns on one executor (one partition of a plan), and
    the rule that picks which of them starts a batch: the policy above the queues, on any clock.

    A group alone on its executor keeps its queue's waiting for the latest start. Several groups
    are work-conserving (``eager``): whenever the executor is free, the queue whose most urgent
    request has the earliest deadline starts its candidate batch. Waiting for a latest start, as a
    queue alone does, would let another group's batch take the executor at that moment; starting
    at once, the queues' batches follow each other as the load comes, which is the cycle of turns
    the planner sized the partition for (`planner._time_share`). `run_shared` drives it on a
    virtual clock, the runtime on the wall clock.
    """

    def __init__(self, latencies: Sequence[Latency], max_batch: int, lead_s: float = 0.0, lead_fraction: float = 0.0):
        if not latencies:
            raise GraftError("Turns: expected the latency of at least one group")
        eager = len(latencies) > 1
        self.queues = [BatchQueue(latency, max_batch, eager, lead_s, lead_fraction) for latency in latencies]

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues)

    def arrive(self, k: int, request: Request, now: float) -> None:
        """Queue ``request`` on group ``k``'s queue; the caller polls before ``now`` moves on."""
        self.queues[k].arrive(request, now)

    def poll(self, now: float, busy_until: float) -> tuple[int | None, list[Decision]]:
        """Poll every queue, the most urgent first: which queue started a batch (None if none did),
        and each queue's `Decision` (its batch, if it started one, and its drops). Once one queue
        starts, the executor is busy for the others, whose polls then only drop."""
        queues = self.queues
        if len(queues) == 1:
            decision = queues[0].poll(now, busy_until)
            return (0 if decision.start else None), [decision]
        order = sorted(range(len(queues)), key=lambda k: (queues[k]._queue[0].deadline_s if queues[k]._queue
                                                          else math.inf, k))
        decisions = [_NOTHING] * len(queues)
        started = None
        for k in order:
            decisions[k] = queues[k].poll(now, busy_until)
            if decisions[k].start:
                busy_until, started = queues[k]._busy_until, k
        if started is not None:  # the queues polled before it saw the executor free
            for k in order[:order.index(started)]:
                more = queues[k].poll(now, busy_until).dropped
                if more:
                    decisions[k] = Decision(decisions[k].start, decisions[k].dropped + more)
        return started, decisions

    def admits(self, k: int, request: Request, start: float) -> bool:
        """Admission control for ``request`` on group ``k``'s queue (`BatchQueue.admits`), from
        ``start``. On a shared partition the other groups' queued work runs on the same executor:
        it is counted ahead of the request, all of it, which is conservative (EDF may run some of
        it later) but never admits what the turns cannot serve."""
        ahead = sum(q.backlog_s() for j, q in enumerate(self.queues) if j != k)
        return self.queues[k].admits(request, start + ahead)

    def reprice(self) -> None:
        """Every queue's latency answers differently now (`BatchQueue.reprice`)."""
        for q in self.queues:
            q.reprice()

    def busy_until(self, k: int) -> float:
        """When the batch that queue ``k`` just started finishes, as its latency prices it."""
        return self.queues[k]._busy_until

    def next_wakeup(self, now: float) -> float | None:
        """When to poll next if nothing arrives (see `BatchQueue.next_wakeup`); None: all empty."""
        wakeups = [t for t in (q.next_wakeup(now) for q in self.queues) if t is not None]
        return min(wakeups, default=None)


def run_shared(groups: Sequence[tuple[Iterable[Request], Latency]], max_batch: int) -> list[Outcome]:
    """Serve several groups that take turns on one executor (a time-shared partition, `Turns`) on
    a virtual clock whose batches take exactly their latency; one `Outcome` per group, in order."""
    turns = Turns([latency for _, latency in groups], max_batch)
    arrivals = sorted((r.arrival_s, r.id, k, r) for k, (requests, _) in enumerate(groups) for r in requests)
    batches: list[list[Batch]] = [[] for _ in groups]
    drops: list[list[Drop]] = [[] for _ in groups]
    busy_until, i, n = -math.inf, 0, len(arrivals)
    now = arrivals[0][0] if arrivals else 0.0
    while i < n or len(turns):
        while i < n and arrivals[i][0] <= now:
            turns.arrive(arrivals[i][2], arrivals[i][3], now)
            i += 1
        started, decisions = turns.poll(now, busy_until)
        for k, decision in enumerate(decisions):
            drops[k] += decision.dropped
        if started is not None:
            busy_until = turns.busy_until(started)
            batches[started].append(Batch(now, decisions[started].start, busy_until))
        events = [turns.next_wakeup(now), busy_until if busy_until > now else None, arrivals[i][0] if i < n else None]
        later = min((t for t in events if t is not None), default=math.inf)
        assert later > now or started is not None, f"the batching policy stalled at {now}"
        now = later
    return [Outcome(tuple(b), tuple(d), q.stats) for b, d, q in zip(batches, drops, turns.queues)]
