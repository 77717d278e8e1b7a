"""The wall-clock runtime: real outputs, every request answered exactly once, under load, faults,
bad input and shutdown. Timing-sensitive checks use `SleepyInstance`, whose batches sleep for
what its profile prices, so they hold on a busy machine; nothing here asserts a duration."""

import gc
import threading
import time
from collections import Counter

import pytest
import torch

from graft_fx import cuts
from graft_fx.errors import GraftError
from graft_fx.serving.partitions import cores
from graft_fx.serving.runtime import REASONS, Rejected, Runtime

from .fixtures import SleepyInstance, hand_plan, sleepy_profile, sleepy_runtime, small_runtime, tiny_model, \
    tiny_profile


def outcome(future):
    """The output, or the rejection's reason."""
    error = future.exception(timeout=30)
    if error is None:
        return future.result()
    assert isinstance(error, Rejected) and error.reason in REASONS, error
    return error.reason


@pytest.fixture
def frozen_heap():
    """The heap as a server keeps it (`graft serve` freezes it once built): the objects that exist
    now (pytest's, torch's: some 300,000) are left out of the cyclic collector's full passes, which
    otherwise pause every thread for 30 to 150 ms here."""
    gc.freeze()
    yield
    gc.unfreeze()


def test_outputs_are_the_model_tails_outputs(frozen_heap):
    profile = tiny_profile()
    model, example = tiny_model()
    tails = cuts.tails(model, list(profile.fragments), example)
    # a generous lead: this test is about values, and a worker stalled past a batch's latest
    # start (a collector pause, a busy host) would otherwise expire a request
    with small_runtime(groups=((0, 1), (2, 3, 4)), budget_s=1.0, lead_s=0.5) as runtime:
        rows = [(f, torch.randn(1, *runtime.spec(f).row_shape)) for _ in range(5) for f in range(5)]
        futures = [runtime.submit(f, x) for f, x in rows]
        for (f, x), future in zip(rows, futures):
            out = outcome(future)
            assert isinstance(out, torch.Tensor), f"fragment {f}: {out}: {future.exception()}"
            torch.testing.assert_close(out, tails[f](x))
        assert {s.name for s in runtime.fragments} == {f"mlp.{c}" for c in profile.fragments}


def test_a_soak_of_10000_requests_loses_and_duplicates_nothing(frozen_heap):
    """Real execution of the tiny MLP: every request answered once, answered ones correct, and
    the metrics agree with the futures."""
    profile = tiny_profile()
    model, example = tiny_model()
    tails = cuts.tails(model, list(profile.fragments), example)
    calls = Counter()
    lock = threading.Lock()

    def count(i):
        def done(_):
            with lock:
                calls[i] += 1
        return done

    n, rate = 10_000, 2_000.0  # requests, and per second: about half what this runtime serves
    torch.manual_seed(1)
    inputs = {f: torch.randn(1, *s) for f, s in enumerate(p.row_shape for p in profile.pieces)}
    with small_runtime(groups=((0, 1, 2), (3, 4)), budget_s=0.5) as runtime:
        futures = []
        start = runtime.clock()
        for i in range(n):
            if i % 100 == 0 and (wait := start + i / rate - runtime.clock()) > 0:
                time.sleep(wait)
            f = i % 5
            futures.append(runtime.submit(f, inputs[f]))
            futures[-1].add_done_callback(count(i))
        results = [outcome(fu) for fu in futures]
        runtime.close()
        exposition = runtime.metrics.exposition().decode()
    assert sorted(calls) == list(range(n)) and set(calls.values()) == {1}
    expected = {f: tails[f](x) for f, x in inputs.items()}
    answered = [(i, r) for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    assert len(answered) > n / 2, Counter(r for r in results if isinstance(r, str))
    for i, r in answered:
        torch.testing.assert_close(r, expected[i % 5])
    submitted = sum(float(line.split()[-1]) for line in exposition.splitlines()
                    if line.startswith("graft_requests_total"))
    assert submitted == n


def test_admitted_requests_meet_their_deadlines_at_three_times_capacity(frozen_heap):
    """Capacity is 8 rows per 48 ms batch; requests come at 3x that for 3 s. The rest are refused
    at the door: their futures are done when submit returns. As in a server, nothing is kept of
    an answered request but its outcome."""
    base_s, per_row_s, n = 0.016, 0.004, 1500
    counts, lock = Counter(), threading.Lock()

    def tally(future):
        error = future.exception()
        with lock:
            counts[error.reason if error is not None else "answered"] += 1

    with sleepy_runtime(budget_s=0.2, base_s=base_s, per_row_s=per_row_s) as runtime:
        gap_s = 1 / (3 * 8 / (base_s + 8 * per_row_s))
        refused_at_once = 0
        start = runtime.clock()
        for i in range(n):
            wait = start + i * gap_s - runtime.clock()
            if wait > 0:
                time.sleep(wait)
            future = runtime.submit(i % 2, torch.full((1, 4), float(i)))
            refused_at_once += future.done() and future.exception() is not None
            future.add_done_callback(tally)
    metrics = runtime.metrics.exposition().decode()
    on_time = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("graft_on_time_total"))
    admitted = n - counts["overloaded"] - counts["hopeless"]
    assert sum(counts.values()) == n
    assert counts["answered"] >= n / 3 * 0.8, counts
    assert on_time >= 0.99 * admitted, (on_time, counts)
    assert counts["overloaded"] >= n / 2 and refused_at_once >= counts["overloaded"], counts


def _slow_host_run(n: int = 600, gap_s: float = 0.002) -> tuple[Counter, float, Runtime]:
    """Requests at 90% of what the profile says a partition serves, on a host three times slower
    than the profile (batches sleep 3x their price): outcomes, on-time answers, the runtime."""
    profile = sleepy_profile(2, 0.004, 0.001)
    plan = hand_plan(profile, ((0, 1),), budget_s=0.2, shared=True)
    counts, lock = Counter(), threading.Lock()

    def tally(future):
        with lock:
            counts[future.exception().reason if future.exception() is not None else "answered"] += 1

    with Runtime(plan, profile, [SleepyInstance((0, 1), base_s=0.012, per_row_s=0.003)]) as runtime:
        start = runtime.clock()
        for i in range(n):
            wait = start + i * gap_s - runtime.clock()
            if wait > 0:
                time.sleep(wait)
            runtime.submit(i % 2, torch.full((1, 4), float(i))).add_done_callback(tally)
    metrics = runtime.metrics.exposition().decode()
    on_time = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("graft_on_time_total"))
    return counts, on_time, runtime


def test_a_host_slower_than_its_profile_is_paced_and_refuses_rather_than_answers_late(frozen_heap, monkeypatch):
    """The same overload twice in one run: with the pace learned, admitted requests are on time
    and the rest are refused; with the pace pinned to 1, most admitted requests are late, and
    fewer requests are on time in all (the late batches cascade)."""
    counts, on_time, runtime = _slow_host_run()
    assert sum(counts.values()) == 600
    assert on_time >= 0.9 * counts["answered"] and counts["overloaded"] >= 150, (on_time, counts)
    (pace,) = runtime.pace()
    assert pace["factor"] > 2 and pace["p50"] > 2 and pace["batches"] > 10, pace
    assert f'graft_pace{{partition="partition0"}} {pace["factor"]}' in runtime.metrics.exposition().decode()
    monkeypatch.setattr("graft_fx.serving.pace.MAX_PACE", 1.0)
    pinned_counts, pinned_on_time, _ = _slow_host_run()
    assert pinned_on_time < 0.5 * pinned_counts["answered"] and pinned_on_time < 0.5 * on_time, (pinned_counts,
                                                                                                  pinned_on_time)


def test_a_failing_batch_fails_only_its_requests():
    with sleepy_runtime(fail_on=13.0, budget_s=0.5) as runtime:
        first = [runtime.submit(i % 2, torch.full((1, 4), float(i))) for i in range(40)]
        results = [outcome(f) for f in first]
        failed = [i for i, r in enumerate(results) if r == "failed"]
        assert 13 in failed and len(failed) <= 8 and all(isinstance(results[i], torch.Tensor)
                                                        for i in range(40) if i not in failed)
        message = str(first[13].exception())
        assert "RuntimeError" in message and "a row starts with 13.0" in message
        assert runtime.ready
        later = runtime.submit(0, torch.full((1, 4), 1.0))
        torch.testing.assert_close(outcome(later), torch.full((1, 4), 2.0))


@pytest.mark.parametrize("fragment, rows, deadline, reason, words", [
    (0, torch.zeros(1, 5), None, "bad-input", "shape [1, 5], expected [1, 4]"),
    (0, torch.zeros(2, 4), None, "bad-input", "shape [2, 4], expected [1, 4]"),
    (0, torch.zeros(1, 4, dtype=torch.float64), None, "bad-input", "dtype torch.float64, expected torch.float32"),
    (0, torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), None, "bad-input", "non-finite"),
    (0, [[0.0] * 4], None, "bad-input", "expected a tensor"),
    ("sleepy.nowhere", torch.zeros(1, 4), None, "bad-input", "unknown fragment 'sleepy.nowhere'"),
    (7, torch.zeros(1, 4), None, "bad-input", "unknown fragment 7"),
    (0, torch.zeros(1, 4), -1.0, "hopeless", "below"),
    (0, torch.zeros(1, 4), float("nan"), "bad-input", "deadline_s nan"),
])
def test_bad_requests_are_refused_at_once_with_a_clear_reason(fragment, rows, deadline, reason, words):
    with sleepy_runtime() as runtime:
        future = runtime.submit(fragment, rows, None if deadline is None else runtime.clock() + deadline)
        assert future.done()
        error = future.exception()
        assert isinstance(error, Rejected) and error.reason == reason and words in str(error), error


def test_many_threads_submitting_each_get_their_own_answers():
    with sleepy_runtime(budget_s=2.0) as runtime:
        results: dict[int, object] = {}

        def client(t):
            futures = [(t * 1000 + i, runtime.submit(i % 2, torch.full((1, 4), float(t * 1000 + i))))
                       for i in range(100)]
            for key, f in futures:
                results[key] = outcome(f)

        threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert len(results) == 800
    for key, r in results.items():
        assert isinstance(r, str) or torch.equal(r, torch.full((1, 4), 2.0 * key))
    assert sum(isinstance(r, torch.Tensor) for r in results.values()) >= 400


def test_closing_drains_or_rejects_what_is_pending():
    runtime = sleepy_runtime(budget_s=5.0)
    pending = [runtime.submit(0, torch.zeros(1, 4)) for _ in range(20)]
    runtime.close(drain=True)
    assert all(isinstance(outcome(f), torch.Tensor) for f in pending)
    assert outcome(runtime.submit(0, torch.zeros(1, 4))) == "shutdown" and not runtime.ready

    runtime = sleepy_runtime(budget_s=5.0)
    pending = [runtime.submit(0, torch.zeros(1, 4)) for _ in range(40)]
    runtime.close(drain=False)
    reasons = Counter(outcome(f) if isinstance(outcome(f), str) else "answered" for f in pending)
    assert set(reasons) <= {"answered", "shutdown"} and reasons["shutdown"] > 0, reasons


def test_time_shared_groups_take_turns_on_one_partition():
    with sleepy_runtime(fragments=3, groups=((0,), (1, 2)), budget_s=0.5) as runtime:
        assert len(runtime.plan.partitions) == 1
        futures = [runtime.submit(i % 3, torch.full((1, 4), float(i))) for i in range(60)]
        assert all(torch.equal(outcome(f), torch.full((1, 4), 2.0 * i)) for i, f in enumerate(futures))
        assert runtime.instances[0].batches and runtime.instances[1].batches


def test_a_plan_that_needs_two_devices_or_mismatched_instances_is_refused():
    profile = sleepy_profile()
    plan = hand_plan(profile, ((0,), (1,)))
    too_big = type(plan)(tuple(g.__class__(g.fragments, 1.0, 1, g.duty_cycle_s, g.busy_s, g.latency_s, g.budget_s,
                                           g.rows) for g in plan.groups), cores(profile.device, 1))
    with pytest.raises(GraftError, match="need 2 devices"):
        Runtime(too_big, profile, [SleepyInstance((0,)), SleepyInstance((1,))])
    with pytest.raises(GraftError, match="expected one per group"):
        Runtime(plan, profile, [SleepyInstance((0, 1))])


def test_admission_on_a_shared_partition_counts_the_other_groups_work(frozen_heap):
    """Twelve requests of one group, then twelve of another, all due in 100 ms on one executor
    whose 8-row batch takes 36 ms: what the turns cannot serve in time is refused at once, and
    nothing admitted expires (a review find: each group's queue admitted on its own)."""
    with sleepy_runtime(fragments=2, groups=((0,), (1,)), base_s=0.02, per_row_s=0.002, budget_s=0.1) as runtime:
        deadline = runtime.clock() + 0.1
        futures = [runtime.submit(f, torch.full((1, 4), float(i)), deadline) for f in (0, 1) for i in range(12)]
        reasons = Counter(r if isinstance(r, str) else "answered" for r in map(outcome, futures))
    assert reasons["expired"] == 0 and reasons["overloaded"] > 0 and reasons["answered"] > 0, reasons


def test_a_far_deadline_does_not_kill_the_worker():
    """A deadline centuries away (an HTTP timeout of 1e300 us, say) once overflowed the worker's
    timed wait and killed it (a review find)."""
    with sleepy_runtime(budget_s=0.5) as runtime:
        far = runtime.submit(0, torch.zeros(1, 4), runtime.clock() + 1e294)
        time.sleep(0.05)
        assert runtime.ready
        assert isinstance(outcome(runtime.submit(1, torch.ones(1, 4))), torch.Tensor)
        runtime.close(drain=False)
        assert far.done() and (isinstance(outcome(far), torch.Tensor) or outcome(far) == "shutdown")


@pytest.mark.parametrize("rows", [torch.empty(1, 4, device="meta"), torch.zeros(1, 4).to_sparse()])
def test_tensors_no_check_can_read_are_bad_input_not_exceptions(rows):
    with sleepy_runtime() as runtime:
        future = runtime.submit(0, rows)
        assert future.done() and outcome(future) == "bad-input"
