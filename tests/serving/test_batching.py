"""The batching policy: hand-written scenarios on `BatchQueue` and `run_offline`, and properties of
`run_offline` over random request streams, latency profiles and batch limits.

Deadlines are checked as the module states them, ``start <= deadline - latency(batch)``. The
random latencies include mix-aware ones, where a request's fragment type sets what it costs, as a
realigned group's batches do.
"""

import math
import random
from dataclasses import dataclass
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graft_fx import GraftError
from graft_fx.serving.batching import EXPIRED, HOPELESS, BatchQueue, Decision, Drop, run_offline, run_shared
from graft_fx.serving.requests import Request


@dataclass(frozen=True)
class Linear:
    """latency(batch) = a + b * len(batch)"""

    a: float
    b: float

    def __call__(self, batch):
        return self.a + self.b * len(batch)


@dataclass(frozen=True)
class Table:
    """latency(batch) = values[len(batch) - 1], a non-decreasing table."""

    values: tuple

    def __call__(self, batch):
        return self.values[len(batch) - 1]


@dataclass(frozen=True)
class Mixed:
    """latency(batch) = a + the sum of its requests' costs by fragment type."""

    a: float
    costs: tuple

    def __call__(self, batch):
        return self.a + sum(self.costs[r.fragment] for r in batch)


FRAGMENTS = 3  # fragment types in the random scenarios
LAT = Linear(1.0, 0.25)  # exact in binary: L(1) = 1.25, L(2) = 1.5, L(4) = 2.0


def requests(*pairs):
    """Requests numbered in order from (arrival, deadline) pairs."""
    return [Request(deadline, arrival, i, 0) for i, (arrival, deadline) in enumerate(pairs)]


def ids(batch):
    return [r.id for r in batch.requests]


# Hand-written scenarios.

def test_a_burst_fills_a_batch_at_once_and_the_rest_waits_for_its_latest_start():
    out = run_offline(requests(*[(0.0, 10.0)] * 6), LAT, max_batch=4)
    assert [(b.start_s, ids(b), b.finish_s) for b in out.batches] == [
        (0.0, [0, 1, 2, 3], 2.0), (10.0 - 1.5, [4, 5], 10.0)]
    assert out.stats.batch_sizes == {4: 1, 2: 1} and out.stats.batches == 2 and not out.drops


def test_a_lone_request_is_started_at_its_latest_start():
    queue = BatchQueue(LAT, max_batch=8)
    r = Request(6.0, 1.0, 0, 0)
    queue.arrive(r, 1.0)
    assert queue.poll(1.0, busy_until=0.0) == Decision()
    assert queue.next_wakeup(1.0) == 6.0 - 1.25
    assert queue.poll(4.75, busy_until=0.0) == Decision(start=(r,))
    assert queue.next_wakeup(4.75) is None and len(queue) == 0
    assert [(b.start_s, b.finish_s) for b in run_offline([r], LAT, 8).batches] == [(4.75, 6.0)]


def test_eager_starts_a_lone_request_on_arrival():
    out = run_offline(requests((1.0, 6.0)), LAT, max_batch=8, eager=True)
    assert [(b.start_s, ids(b)) for b in out.batches] == [(1.0, [0])]


def test_a_hopeless_request_is_dropped_on_arrival():
    queue = BatchQueue(LAT, max_batch=8)
    r = Request(1.0, 0.0, 0, 0)  # budget 1.0 < latency(1) = 1.25
    queue.arrive(r, 0.0)
    assert queue.poll(0.0, busy_until=0.0) == Decision(dropped=(Drop(r, 0.0, HOPELESS),))
    assert queue.stats.drops == {HOPELESS: 1} and queue.stats.dropped == 1
    assert queue.next_wakeup(0.0) is None


def test_a_request_squeezed_out_by_a_started_batch_is_dropped_when_it_starts():
    # a fills the batch (max_batch 1) and keeps the executor until 1.25: b (latest start 1.15)
    # can no longer make it and goes at once; c (latest start exactly 1.25) still can.
    a, b, c = reqs = requests((0.0, 2.0), (0.0, 2.4), (0.0, 2.5))
    queue = BatchQueue(LAT, max_batch=1)
    for r in reqs:
        queue.arrive(r, 0.0)
    assert queue.poll(0.0, busy_until=0.0) == Decision((a,), (Drop(b, 0.0, EXPIRED),))
    assert queue.next_wakeup(0.0) == 1.25 and queue.pending == (c,)
    out = run_offline(reqs, LAT, max_batch=1)
    assert [(b.start_s, ids(b), b.finish_s) for b in out.batches] == [
        (0.0, [0], 1.25), (1.25, [2], 2.5)]
    assert [(d.request.id, d.at_s, d.reason) for d in out.drops] == [(1, 0.0, EXPIRED)]


def test_a_mix_aware_latency_prices_each_request_by_its_fragment_type():
    """An early-cut request (type 0) costs more than a late-cut one (type 1): the expensive one is
    hopeless although its deadline is later, and the cheap ones batch together."""
    latency = Mixed(1.0, (2.0, 0.0))
    reqs = [Request(2.0, 0.0, 0, 1), Request(2.5, 0.0, 1, 0), Request(2.0, 0.0, 2, 1)]
    out = run_offline(reqs, latency, max_batch=8)
    assert [(d.request.id, d.reason) for d in out.drops] == [(1, HOPELESS)]
    assert [(b.start_s, ids(b), b.finish_s) for b in out.batches] == [(1.0, [0, 2], 2.0)]


def test_a_batch_that_cannot_grow_starts_now():
    # A third request would miss the head's deadline (0 > 1.6 - 1.75), and waiting only makes
    # that worse: the pair starts at once, the third waits for its own latest start.
    out = run_offline(requests((0.0, 1.6), (0.0, 10.0), (0.0, 10.0)), LAT, max_batch=8)
    assert [(b.start_s, ids(b)) for b in out.batches] == [(0.0, [0, 1]), (10.0 - 1.25, [2])]


def test_nothing_starts_while_the_executor_is_busy():
    queue = BatchQueue(LAT, max_batch=2)
    for r in requests((0.0, 10.0), (0.0, 10.0)):
        queue.arrive(r, 0.0)
    assert queue.poll(0.0, busy_until=3.0) == Decision()
    assert queue.next_wakeup(0.0) == 3.0  # full: it starts as soon as the executor is free
    assert len(queue.poll(3.0, busy_until=3.0).start) == 2


def test_a_late_poll_prices_the_queue_without_the_requests_it_dropped():
    """A wall-clock caller may poll after the wakeup it was told. B (expensive alone, latest start
    6.5) expires at that late poll; A and C, cheap, then fit together until 10 - 1 = 9, so the
    queue keeps waiting for arrivals rather than starting A alone."""
    latency = Mixed(1.0, (0.0, 3.0))
    a, b, c = Request(10.0, 0.0, 0, 0), Request(10.5, 0.0, 1, 1), Request(11.0, 0.0, 2, 0)
    queue = BatchQueue(latency, max_batch=8)
    for r in (a, b, c):
        queue.arrive(r, 0.0)
    assert queue.poll(0.0, busy_until=0.0) == Decision()
    assert queue.next_wakeup(0.0) == 10.0 - 4.0  # all three ride: latency 1 + 3
    assert queue.poll(7.0, busy_until=0.0) == Decision(dropped=(Drop(b, 7.0, EXPIRED),))
    assert queue.next_wakeup(7.0) == 9.0
    assert queue.poll(9.0, busy_until=0.0) == Decision(start=(a, c))


def test_bad_calls_raise():
    with pytest.raises(GraftError, match="max_batch"):
        BatchQueue(LAT, max_batch=0)
    queue = BatchQueue(LAT, max_batch=2)
    queue.poll(5.0, busy_until=0.0)
    with pytest.raises(GraftError, match="backwards"):
        queue.arrive(Request(10.0, 4.0, 0, 0), 4.0)


# Properties of run_offline.

@st.composite
def latencies(draw, max_batch):
    kind = draw(st.sampled_from(["linear", "table", "mixed"]))
    if kind == "linear":
        return Linear(draw(st.floats(0.01, 1.0)), draw(st.floats(0.0, 0.5)))
    if kind == "mixed":
        return Mixed(draw(st.floats(0.01, 1.0)), tuple(draw(st.lists(st.floats(0.0, 1.0),
                                                                     min_size=FRAGMENTS, max_size=FRAGMENTS))))
    steps = draw(st.lists(st.floats(0.0, 0.5), min_size=max_batch - 1, max_size=max_batch - 1))
    return Table(tuple(accumulate(steps, initial=draw(st.floats(0.01, 1.0)))))


@st.composite
def scenarios(draw, infinite_deadlines=False):
    """(requests, latency, max_batch, eager): bursts (gaps of 0) and budgets from hopeless to
    roomy, both in units of latency(1), so that batches fill, wait, and drop."""
    max_batch = draw(st.integers(1, 8))
    latency = draw(latencies(max_batch))
    n = draw(st.integers(0, 40))
    gaps = draw(st.lists(st.just(0.0) | st.floats(0.0, 2.0), min_size=n, max_size=n))
    budgets = draw(st.lists(st.floats(0.5, 8.0), min_size=n, max_size=n))
    fragments = draw(st.lists(st.integers(0, FRAGMENTS - 1), min_size=n, max_size=n))
    unit = latency((Request(0.0, 0.0, 0, 0),))
    reqs = [Request(math.inf if infinite_deadlines else t + budget * unit, t, i, f)
            for i, (t, budget, f) in enumerate(zip(accumulate(g * unit for g in gaps), budgets, fragments))]
    return reqs, latency, max_batch, draw(st.booleans())


def fates(out):
    """Request id -> the time it left the queue: its batch's start, or its drop."""
    left = {r.id: b.start_s for b in out.batches for r in b.requests}
    left.update((d.request.id, d.at_s) for d in out.drops)
    return left


def waiting(reqs, out, batch, latency):
    """The requests left waiting when ``batch`` started that could still have met their deadline
    alone then: arrived by its start, not in it, gone no earlier, and not hopeless at its start
    (those are dropped before the batch is formed)."""
    left, start = fates(out), batch.start_s
    return [r for r in reqs if r.arrival_s <= start and r not in batch.requests
            and left[r.id] >= start and start <= r.deadline_s - latency((r,))]


@given(scenarios())
def test_every_request_is_answered_or_dropped_exactly_once(scenario):
    reqs, latency, max_batch, eager = scenario
    out = run_offline(reqs, latency, max_batch, eager)
    served = [r.id for b in out.batches for r in b.requests]
    dropped = [d.request.id for d in out.drops]
    assert sorted(served + dropped) == [r.id for r in reqs]
    s = out.stats
    assert (s.arrived, s.dispatched, s.dropped, s.batches) == (
        len(reqs), len(served), len(dropped), len(out.batches))
    assert s.batch_sizes == {n: sum(len(b.requests) == n for b in out.batches)
                             for n in {len(b.requests) for b in out.batches}}
    assert s.drops == {reason: sum(d.reason == reason for d in out.drops)
                       for reason in {d.reason for d in out.drops}}


@given(scenarios())
def test_batches_meet_every_deadline_and_never_overlap(scenario):
    reqs, latency, max_batch, eager = scenario
    out = run_offline(reqs, latency, max_batch, eager)
    free = -math.inf
    for b in out.batches:
        assert 1 <= len(b.requests) <= max_batch
        assert b.start_s >= free  # the executor was free
        assert all(r.arrival_s <= b.start_s <= r.deadline_s - latency(b.requests)
                   for r in b.requests)
        free = b.finish_s
    assert sorted(out.completed_s().items()) == sorted(
        (r.id, b.start_s + latency(b.requests)) for b in out.batches for r in b.requests)


@given(scenarios())
def test_drops_are_forced_and_prompt(scenario):
    """Dropped at t only if, started at max(t, when the executor is next free), it would miss its
    deadline even alone; and no later than the moment that became true (or its arrival)."""
    reqs, latency, max_batch, eager = scenario
    out = run_offline(reqs, latency, max_batch, eager)
    for d in out.drops:
        r, t = d.request, d.at_s
        free = max((b.finish_s for b in out.batches if b.start_s <= t), default=-math.inf)
        latest = r.deadline_s - latency((r,))
        assert max(t, free) > latest
        assert r.arrival_s <= t <= max(r.arrival_s, latest)
        assert d.reason == (HOPELESS if r.arrival_s > latest else EXPIRED)


@given(scenarios())
def test_batches_are_the_longest_edf_prefix_that_fits(scenario):
    """Each batch is in EDF order and precedes, in EDF order, every request left waiting that
    could still have made it; and it stops short of max_batch only when the first such request
    would have broken the batch's tightest (its head's) deadline."""
    reqs, latency, max_batch, eager = scenario
    out = run_offline(reqs, latency, max_batch, eager)
    for b in out.batches:
        rest = waiting(reqs, out, b, latency)
        assert list(b.requests) == sorted(b.requests)
        assert all(r > b.requests[-1] for r in rest)
        if rest and len(b.requests) < max_batch:
            assert b.start_s > b.requests[0].deadline_s - latency((*b.requests, min(rest)))


@given(scenarios())
def test_batches_wait_only_while_they_could_grow(scenario):
    """A batch that is full, or leaves a request waiting, or is eager, starts the moment that
    became so: when the executor freed or a request arrived. Any other batch starts exactly at
    its latest start."""
    reqs, latency, max_batch, eager = scenario
    out = run_offline(reqs, latency, max_batch, eager)
    free = -math.inf
    for b in out.batches:
        rest = waiting(reqs, out, b, latency)
        if eager or rest or len(b.requests) == max_batch:
            assert b.start_s == free or b.start_s in {r.arrival_s for r in [*b.requests, *rest]}
        else:
            assert b.start_s == b.requests[0].deadline_s - latency(b.requests)
        free = b.finish_s


@given(scenarios(infinite_deadlines=True))
def test_without_deadlines_nothing_is_dropped_and_batches_are_as_large_as_allowed(scenario):
    """Waiting costs nothing, so every batch but the last is full; eager batches take everything
    queued, up to max_batch."""
    reqs, latency, max_batch, eager = scenario
    out = run_offline(reqs, latency, max_batch, eager)
    assert not out.drops and out.stats.dispatched == len(reqs)
    for i, b in enumerate(out.batches):
        queued = len(waiting(reqs, out, b, latency)) + len(b.requests)
        if eager:
            assert len(b.requests) == min(max_batch, queued)
        elif i < len(out.batches) - 1:
            assert len(b.requests) == max_batch


# The queue against a reference: the same policy with no data structure.

@dataclass(frozen=True)
class Pieces:
    """latency(batch) as a realigned group prices it (`pricing.group_latency`): piece i runs
    on the rows of every request whose fragment type is at most i, ``table[i][rows]`` each."""

    table: tuple  # per piece, non-decreasing in rows, table[i][0] == 0

    def __call__(self, batch):
        rows = [0] * len(self.table)
        for r in batch:
            rows[r.fragment] += 1
        total, n = 0.0, 0
        for piece, k in zip(self.table, rows):
            n += k
            total += piece[n]
        return total


def reference(reqs, latency, max_batch, eager):
    """`run_offline` as the module docstring states the policy, recomputed from scratch at every
    event: the queue is re-sorted, scanned for drops, and every prefix is priced, with no memory
    between polls. Returns batches as (start, ids, finish) and drops as (id, at, reason)."""
    arrivals = sorted(reqs, key=lambda r: (r.arrival_s, r.id))
    queue, batches, drops = [], [], []
    busy, i, now = -math.inf, 0, arrivals[0].arrival_s if arrivals else 0.0

    def latest(r):
        return r.deadline_s - latency((r,))

    def drop(start):  # in order of latest start alone, then EDF order
        for r in sorted((r for r in queue if start > latest(r)), key=lambda r: (latest(r), r)):
            queue.remove(r)
            drops.append((r.id, now, HOPELESS if r.arrival_s > latest(r) else EXPIRED))

    def candidate(start):  # the longest EDF prefix, up to max_batch, that meets the head's deadline
        queue.sort()
        k = 1
        while k < min(max_batch, len(queue)) and start <= queue[0].deadline_s - latency(queue[:k + 1]):
            k += 1
        return k

    def dispatch_time(start):
        k = candidate(start)
        if eager or k < len(queue) or k == max_batch:
            return start
        return queue[0].deadline_s - latency(queue[:k])

    while i < len(arrivals) or queue:
        while i < len(arrivals) and arrivals[i].arrival_s <= now:
            queue.append(arrivals[i])
            i += 1
        drop(max(now, busy))
        if now >= busy and queue and dispatch_time(now) <= now:
            batch = queue[:candidate(now)]
            del queue[:len(batch)]
            busy = now + latency(batch)
            batches.append((now, [r.id for r in batch], busy))
            drop(busy)
        events = [busy if busy > now else None, arrivals[i].arrival_s if i < len(arrivals) else None]
        if queue:
            start = max(now, busy)
            events.append(now if any(start > latest(r) for r in queue) else dispatch_time(start))
        now = min((t for t in events if t is not None), default=math.inf)
    return batches, drops


def assert_matches_reference(reqs, latency, max_batch, eager):
    out = run_offline(reqs, latency, max_batch, eager)
    batches, drops = reference(reqs, latency, max_batch, eager)
    assert [(b.start_s, ids(b), b.finish_s) for b in out.batches] == batches
    assert [(d.request.id, d.at_s, d.reason) for d in out.drops] == drops


@st.composite
def tied_scenarios(draw):
    """(requests, latency, max_batch, eager) on a grid of quarters, which binary floats hold
    exactly: deadlines, arrivals, latest starts and batch finishes tie often, and a batch often
    starts exactly at its latest start. Latencies include the realigned-group shape."""
    max_batch = draw(st.integers(1, 8))
    quarter = st.integers(0, 4).map(lambda q: q / 4)
    kind = draw(st.sampled_from(["linear", "mixed", "pieces"]))
    if kind == "linear":
        latency = Linear(draw(st.integers(1, 4)) / 4, draw(quarter))
    elif kind == "mixed":
        latency = Mixed(draw(st.integers(1, 4)) / 4, tuple(draw(st.lists(quarter, min_size=FRAGMENTS,
                                                                            max_size=FRAGMENTS))))
    else:
        steps = st.lists(quarter, min_size=max_batch, max_size=max_batch)
        latency = Pieces(tuple(tuple(accumulate(draw(steps), initial=0.0)) for _ in range(FRAGMENTS)))
    n = draw(st.integers(0, 40))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0]), min_size=n, max_size=n))
    budgets = draw(st.lists(st.integers(0, 16).map(lambda q: q / 4), min_size=n, max_size=n))
    fragments = draw(st.lists(st.integers(0, FRAGMENTS - 1), min_size=n, max_size=n))
    reqs = [Request(t + budget, t, i, f)
            for i, (t, budget, f) in enumerate(zip(accumulate(gaps), budgets, fragments))]
    return draw(st.permutations(reqs)), latency, max_batch, draw(st.booleans())


@given(scenarios())
def test_run_offline_matches_the_reference(scenario):
    assert_matches_reference(*scenario)


@given(tied_scenarios())
def test_run_offline_matches_the_reference_when_times_tie(scenario):
    assert_matches_reference(*scenario)


@pytest.mark.parametrize("seed", range(6))
def test_long_streams_match_the_reference(seed):
    """Long queues, overload and idle spells: Poisson arrivals at 0.5 to 3 times what the
    largest batch can serve, budgets from hopeless to ten batch times, mixed fragment types."""
    rng = random.Random(seed)
    max_batch = rng.choice([4, 8, 16])
    latency = Pieces(tuple(tuple(accumulate((rng.uniform(0.0, 0.05) for _ in range(max_batch)),
                                            initial=0.0)) for _ in range(FRAGMENTS)))
    full = latency([Request(0.0, 0.0, 0, 0)] * max_batch)
    rate = rng.uniform(0.5, 3.0) * max_batch / full
    t, reqs = 0.0, []
    for i in range(1500):
        t += rng.expovariate(rate)
        reqs.append(Request(t + rng.uniform(0.2, 10.0) * full, t, i, rng.randrange(FRAGMENTS)))
    eager = seed % 3 == 2
    assert_matches_reference(reqs, latency, max_batch, eager)
    out = run_offline(reqs, latency, max_batch, eager)
    assert out.drops and len(out.batches) > 50  # the stream exercised dropping and batching


# Several groups taking turns on one executor (run_shared).

@given(scenarios(), st.integers(1, 3), st.randoms(use_true_random=False))
def test_shared_partitions_answer_every_request_once_one_batch_at_a_time(scenario, groups, rnd):
    """Split a stream among groups with their own latency: every request leaves exactly once,
    batches of different groups never overlap on the one executor, and every batch finishes by
    the deadline of each of its requests."""
    reqs, latency, max_batch, _ = scenario
    parts = [[r for r in reqs if rnd.randrange(groups) == g] for g in range(groups)] if groups > 1 else [reqs]
    outcomes = run_shared([(p, latency) for p in parts], max_batch)
    for part, out in zip(parts, outcomes):
        left = [r.id for b in out.batches for r in b.requests] + [d.request.id for d in out.drops]
        assert sorted(left) == sorted(r.id for r in part)
        for b in out.batches:
            assert len(b.requests) <= max_batch
            assert all(b.finish_s <= r.deadline_s + 1e-9 for r in b.requests)
    spans = sorted((b.start_s, b.finish_s) for out in outcomes for b in out.batches)
    assert all(a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))


@given(scenarios())
def test_one_group_alone_on_a_partition_waits_as_its_queue_alone(scenario):
    """`Turns` of one group is the group's own queue, waiting for latest starts: `run_offline`."""
    reqs, latency, max_batch, _ = scenario
    (shared,) = run_shared([(reqs, latency)], max_batch)
    alone = run_offline(reqs, latency, max_batch)
    assert shared.batches == alone.batches and shared.drops == alone.drops


def test_the_most_urgent_group_takes_the_free_executor():
    """Two groups each with one request waiting: the executor goes to the earlier deadline first."""
    unit = Linear(1.0, 0.0)
    a, b = Request(10.0, 0.0, 0, 0), Request(5.0, 0.0, 1, 0)
    out_a, out_b = run_shared([([a], unit), ([b], unit)], 4)
    assert out_b.batches[0].start_s == 0.0 and out_a.batches[0].start_s == out_b.batches[0].finish_s


# Admission control and the wall clock's lead (the runtime's use of the queue)

def test_admission_takes_what_fits_and_refuses_what_would_cost_a_deadline():
    """Batches of k cost 1 + k. Four requests due at 10 fit in one batch from 0 (5 <= 10)."""
    q = BatchQueue(Linear(1.0, 1.0), max_batch=4)
    for i in range(4):
        r = Request(10.0, 0.0, i, 0)
        assert q.admits(r, 0.0)
        q.arrive(r, 0.0)
    # a fifth due at 10 needs a second batch ending at 5 + 2 = 7 <= 10: fits
    assert q.admits(Request(10.0, 0.0, 4, 0), 0.0)
    # one due at 6 goes first in EDF order: from 0, a batch of it and three others ends at 5 <= 6
    # and the last one's at 7 <= 10; from 4, only it fits by 6, and the four behind it would end
    # at 11 > 10 where without it they end at 9
    assert q.admits(Request(6.0, 0.0, 5, 0), 0.0)
    assert not q.admits(Request(6.0, 0.0, 6, 0), 4.0)
    # alone it cannot make it at all
    assert not q.admits(Request(1.5, 0.0, 7, 0), 0.0)


def test_admission_is_not_blocked_by_a_request_that_is_already_doomed():
    q = BatchQueue(Linear(1.0, 1.0), max_batch=4)
    q.arrive(Request(1.0, 0.0, 0, 0), 0.0)  # needs 2, has 1: the next poll drops it
    assert q.admits(Request(10.0, 0.0, 1, 0), 0.0)


def test_a_lead_starts_a_waiting_batch_that_much_before_its_latest_start():
    plain, early = BatchQueue(Linear(1.0, 1.0), 8), BatchQueue(Linear(1.0, 1.0), 8, lead_s=0.5)
    for q in (plain, early):
        q.arrive(Request(10.0, 0.0, 0, 0), 0.0)
        assert q.poll(0.0, -math.inf) == Decision()
    assert plain.next_wakeup(0.0) == 8.0 and early.next_wakeup(0.0) == 7.5
    assert early.poll(7.5, -math.inf).start and not plain.poll(7.5, -math.inf).start
    with pytest.raises(GraftError, match="lead_s"):
        BatchQueue(Linear(1.0, 1.0), 8, lead_s=-1.0)


def test_a_repriced_queue_decides_on_the_new_prices():
    """Doubling the price moves the latest start earlier and drops what the new price dooms."""
    scale = [1.0]
    q = BatchQueue(lambda batch: scale[0] * (1.0 + len(batch)), 8)
    q.arrive(Request(10.0, 0.0, 0, 0), 0.0)
    q.arrive(Request(4.5, 0.0, 1, 0), 0.0)
    assert q.poll(0.0, -math.inf) == Decision() and q.next_wakeup(0.0) == 1.5  # 4.5 - (1 + 2)
    scale[0] = 2.0
    q.reprice()
    # alone the second costs 4, by 4.5 it must start at 0.5; together they cost 6: too late for 4.5
    assert q.next_wakeup(0.0) == 0.0
    decision = q.poll(1.0, -math.inf)
    assert [d.request.id for d in decision.dropped] == [1] and decision.dropped[0].reason == EXPIRED
    assert q.next_wakeup(1.0) == 6.0  # 10 - 2 * 2
