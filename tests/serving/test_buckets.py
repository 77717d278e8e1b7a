"""Padded batching on the serving side: with buckets, every batch is priced, planned, simulated
and served at its padded rows (each fragment's requests padded up to the next bucket); without,
nothing changes. The realigned module's own padding is tested in tests/test_buckets.py."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from graft_fx import cuts
from graft_fx.buckets import POWERS_OF_TWO, bucketed
from graft_fx.errors import GraftError
from graft_fx.serving.instances import build
from graft_fx.serving.planner import Demand, Replanner, least_budget, plan
from graft_fx.serving.pricing import group_latency
from graft_fx.serving.requests import Request
from graft_fx.serving.runtime import Rejected
from graft_fx.serving.simulator import Scenario, simulate

from .fixtures import SleepyInstance, hand_plan, sleepy_profile, small_runtime, tiny_model, tiny_profile
from .scenarios import resnet50, scenario
from .test_planner import FOUR, TOL, cases, plan_or_none, synthetic

BUCKETS = [POWERS_OF_TWO, (1, 3, 5, 8), (2, 4, 8), (4, 16)]


def batch_of(fragments):
    return [Request(1.0, 0.0, i, f) for i, f in enumerate(fragments)]


def padded_counts(fragments, buckets):
    return {f: bucketed(fragments.count(f), buckets) for f in set(fragments)}


# Pricing.

@given(st.lists(st.integers(0, 10), min_size=1, max_size=64), st.sampled_from([0.1, 0.37, 1.0]),
       st.sampled_from(BUCKETS))
def test_a_mix_is_priced_at_its_bucketed_rows(fragments, share, buckets):
    profile, _ = resnet50()
    members = sorted(set(fragments))
    priced = group_latency(profile, members, share, buckets)(batch_of(fragments))
    assert priced == pytest.approx(profile.batch_s(padded_counts(fragments, buckets), share))


@given(st.lists(st.integers(0, 10), min_size=1, max_size=64), st.sampled_from([0.1, 1.0]))
def test_without_buckets_a_batch_is_priced_at_its_own_rows(fragments, share):
    profile, _ = resnet50()
    members = sorted(set(fragments))
    counts = {f: fragments.count(f) for f in members}
    assert group_latency(profile, members, share, None)(batch_of(fragments)) == pytest.approx(
        profile.batch_s(counts, share))


def test_padding_never_makes_a_batch_cheaper_and_prices_three_requests_as_four():
    profile, _ = resnet50()
    plain, padded = group_latency(profile, [0, 5], 0.5), group_latency(profile, [0, 5], 0.5, POWERS_OF_TWO)
    for fragments in ([0], [5, 5, 5], [0, 0, 0, 5], [0] * 5 + [5] * 3):
        assert padded(batch_of(fragments)) >= plain(batch_of(fragments))
    assert padded(batch_of([5, 5, 5])) == pytest.approx(plain(batch_of([5] * 4)))
    alone = group_latency(profile, [5], 0.5, POWERS_OF_TWO)
    assert alone(batch_of([5] * 3)) == pytest.approx(profile.fragment_s(5, 4, 0.5))


def test_padded_rows_beyond_the_largest_measured_batch_follow_the_profiles_slope():
    """A batch of the policy's largest size (the profile's largest measured batch) can pad to
    more rows: priced by the profile's rule for large batches, as `Profile.batch_s` is."""
    profile = FOUR  # measured up to 16 rows
    assert profile.max_batch == 16
    mix = [0] * 9 + [2] * 7  # pads to 16 + 8 rows from piece 2 on
    priced = group_latency(profile, [0, 2], 1.0, POWERS_OF_TWO)(batch_of(mix))
    assert priced == pytest.approx(profile.batch_s({0: 16, 2: 8}, 1.0))
    assert priced > profile.batch_s({0: 16}, 1.0)
    alone = group_latency(profile, [1], 1.0, (5, 32))(batch_of([1] * 6))  # one fragment: 6 pads to 32
    assert alone == pytest.approx(profile.fragment_s(1, 32, 1.0))


def test_bad_buckets_are_refused_when_pricing():
    with pytest.raises(GraftError, match=r"buckets=\[4, 2\]: expected positive batch sizes in increasing order"):
        group_latency(FOUR, [0, 1], 1.0, [4, 2])


# Planning.

def padded_rows(rates, u, buckets, max_batch):
    """Each member's rows at its pieces, in the expected batch and in a request's, as the planner
    pads them: bucketed at whole rows, linear in between, the request's row added to the member
    whose padding it grows most (`planner` docstring, "Padded batching")."""
    sizes = [bucketed(k, buckets) for k in range(max_batch + 4)]
    pad = lambda x: np.interp(x, np.arange(len(sizes)), sizes)  # noqa: E731
    alone = pad(rates * u)
    busy = np.cumsum(alone)
    return busy, busy + np.maximum.accumulate(pad(rates * u + 1) - alone)


def check_padded(profile, demands, p, buckets):
    """Every group, recomputed from ``profile`` at its padded rows, keeps up, fits its budget and
    stays within the measured batches."""
    by_fragment = {d.fragment: d for d in demands}
    assert sorted(f for g in p.groups for f in g.fragments) == sorted(by_fragment)
    for g in p.groups:
        rates = np.array([by_fragment[f].rate_per_s for f in g.fragments])
        busy, with_request = padded_rows(rates, g.duty_cycle_s / g.replicas, buckets, profile.max_batch)
        ends = list(g.fragments[1:]) + [len(profile.pieces)]
        per_piece = lambda rows: np.repeat(rows, np.diff([g.fragments[0]] + ends))  # noqa: E731
        latency = profile.pieces_s(per_piece(with_request), g.share, g.fragments[0]).sum()
        assert latency == pytest.approx(g.latency_s, rel=1e-9)
        assert profile.pieces_s(per_piece(busy), g.share, g.fragments[0]).sum() == pytest.approx(g.busy_s, rel=1e-9)
        assert busy[-1] == pytest.approx(g.rows, rel=TOL)
        assert with_request[-1] <= profile.max_batch * (1 + TOL)
        assert latency <= g.duty_cycle_s * (1 + TOL) and g.duty_cycle_s + latency <= g.budget_s * (1 + TOL)


@given(cases(), st.booleans(), st.sampled_from(BUCKETS))
def test_padded_plans_meet_their_budgets_at_their_padded_rows(case, realign_groups, buckets):
    profile, demands = case
    p = plan_or_none(profile, demands, realign_groups, buckets=buckets)
    assume(p is not None)
    check_padded(profile, demands, p, buckets)


@given(cases(), st.booleans(), st.sampled_from(BUCKETS))
def test_padding_never_plans_less_share_than_no_padding(case, realign_groups, buckets):
    """Padding only adds rows; exact for the grouping (time sharing is a greedy packing on top)."""
    profile, demands = case
    padded = plan_or_none(profile, demands, realign_groups, time_sharing=False, buckets=buckets)
    assume(padded is not None)
    plain = plan(profile, demands, realign_groups, time_sharing=False)
    assert padded.total_share >= plain.total_share - TOL


@given(cases(), st.floats(1.0, 4.0), st.sampled_from(BUCKETS))
def test_more_load_never_needs_less_share_when_padded(case, k, buckets):
    profile, demands = case
    base = plan_or_none(profile, demands, time_sharing=False, buckets=buckets)
    assume(base is not None)
    scaled = plan_or_none(profile, [Demand(d.fragment, d.rate_per_s * k, d.budget_s) for d in demands],
                          time_sharing=False, buckets=buckets)
    assert scaled is None or scaled.total_share >= base.total_share - TOL


def test_padding_to_large_buckets_needs_more_share_on_the_h200_resnet50():
    profile, _ = resnet50()
    demands = [Demand(f, 300.0, 8 * least_budget(profile, f)) for f in (2, 4, 6, 8)]
    plain, padded = plan(profile, demands), plan(profile, demands, buckets=(16, 64))
    assert padded.total_share > plain.total_share
    check_padded(profile.planning, demands, padded, (16, 64))


def test_one_request_padded_to_the_first_bucket_sets_the_least_budget():
    profile = synthetic([1e-4, 2e-4], [1e-4, 1e-4])
    assert least_budget(profile, 0, (1, 2)) == least_budget(profile, 0)
    assert least_budget(profile, 0, (4, 8)) == pytest.approx(least_budget(profile, 0) * profile.fragment_s(0, 4, 1.0)
                                                             / profile.fragment_s(0, 1, 1.0))
    tight = [Demand(0, 10.0, 1.5 * least_budget(profile, 0))]
    assert plan(profile, tight).groups
    with pytest.raises(GraftError, match="on one row \\(padded to 4\\)"):
        plan(profile, tight, buckets=(4, 8))


def test_the_replanner_plans_padded():
    budgets = {0: 0.01, 2: 0.01}
    rates = {0: 500.0, 2: 800.0}
    replanned = Replanner(FOUR, budgets, buckets=(2, 4, 8, 16)).observe(rates)
    assert replanned == plan(FOUR, [Demand(f, r, budgets[f]) for f, r in rates.items()], buckets=(2, 4, 8, 16))
    with pytest.raises(GraftError, match="buckets="):
        Replanner(FOUR, budgets, buckets=(0, 1))


# Simulation.

def test_a_scenario_keeps_its_buckets_checked():
    assert Scenario(*resnet50(), (), 1.0, buckets=[1, 2, 4]).buckets == (1, 2, 4)
    assert Scenario(*resnet50(), (), 1.0).buckets is None
    with pytest.raises(GraftError, match="buckets="):
        Scenario(*resnet50(), (), 1.0, buckets=[2, 2])


def test_the_simulator_plans_and_replays_padded_batches():
    """Every request padded to 64 rows: each plan's groups are sized for batches of at least 64
    rows from their first member on, and the replay still answers the target on time."""
    padded = {r.name: r for r in simulate(replace(scenario(), buckets=(64,)), ["graft", "per-fragment"])}
    profile = scenario().profile.planning
    for r in padded.values():
        assert r.share is not None and r.attainable_attainment >= 0.99, r.name
        for g in r.plan.groups:
            assert g.latency_s >= profile.fragment_s(g.fragments[0], 64, g.share) * (1 - TOL)


# Serving.

class PaddingSleepyInstance(SleepyInstance):
    """A `SleepyInstance` that says it pads its rows to ``buckets``."""

    def __init__(self, fragments, buckets):
        super().__init__(fragments)
        self.buckets = buckets


def test_the_runtime_refuses_instances_that_pad_otherwise_than_it_prices():
    from graft_fx.serving.runtime import Runtime

    profile = sleepy_profile()
    the_plan = hand_plan(profile, ((0, 1),), shared=True)
    with pytest.raises(GraftError, match=r"padded to buckets=\[1, 2, 4\], but group 0 pads to None"):
        Runtime(replace(the_plan, buckets=(1, 2, 4)), profile, [SleepyInstance((0, 1))])
    with pytest.raises(GraftError, match=r"padded to buckets=None, but group 0 pads to \[1, 2, 4\]"):
        Runtime(the_plan, profile, [PaddingSleepyInstance((0, 1), (1, 2, 4))])


def test_the_runtime_prices_a_request_at_its_padded_rows():
    """A sleepy profile costs 4 ms + 1 ms per row: one request padded to 4 rows is priced at 8 ms
    (plus the runtime's own 1.2 ms), which a hopeless request's rejection reports."""
    from graft_fx.serving.runtime import Runtime

    profile = sleepy_profile()
    the_plan = hand_plan(profile, ((0, 1),), shared=True, buckets=(4, 8))
    with Runtime(the_plan, profile, [PaddingSleepyInstance((0, 1), (4, 8))]) as runtime:
        future = runtime.submit(0, torch.zeros(1, 4), runtime.clock() - 1.0)
        error = future.exception(timeout=30)
        assert isinstance(error, Rejected) and error.reason == "hopeless"
        assert "9.2 ms this request takes alone" in str(error), error
        answered = runtime.submit(1, torch.ones(1, 4)).result(timeout=30)
        torch.testing.assert_close(answered, torch.full((1, 4), 2.0))


def test_padded_instances_answer_each_request_its_own_row():
    model, example = tiny_model()
    profile = tiny_profile()
    tails = cuts.tails(model, list(profile.fragments), example)
    the_plan = hand_plan(profile, ((0, 2), (1, 3, 4)), buckets=(1, 2, 4, 8))
    instances = build(model, example, profile, the_plan)
    assert [i.buckets for i in instances] == [(1, 2, 4, 8)] * 2
    torch.manual_seed(0)
    fragments = [0, 2, 0, 0, 2, 2, 2, 2, 2]  # 3 rows pad to 4, 6 rows to 8
    rows = [torch.randn(1, *instances[0].input_spec(f).row_shape) for f in fragments]
    for f, x, out in zip(fragments, rows, instances[0].run(fragments, rows)):
        torch.testing.assert_close(out, tails[f](x))
    (alone,) = instances[1].run([4], [torch.randn(1, *instances[1].input_spec(4).row_shape)])
    assert alone.shape[0] == 1


def test_a_padded_runtime_answers_what_the_model_tails_do():
    model, example = tiny_model()
    profile = tiny_profile()
    tails = cuts.tails(model, list(profile.fragments), example)
    with small_runtime(groups=((0, 1), (2, 3, 4)), budget_s=1.0, lead_s=0.5, buckets=POWERS_OF_TWO) as runtime:
        assert runtime.buckets == POWERS_OF_TWO
        assert all(i.buckets == POWERS_OF_TWO for i in runtime.instances)
        requests = [(f, torch.randn(1, *runtime.spec(f).row_shape)) for _ in range(3) for f in range(5)]
        futures = [runtime.submit(f, x) for f, x in requests]
        for (f, x), future in zip(requests, futures):
            torch.testing.assert_close(future.result(timeout=30), tails[f](x))


def test_a_plan_refuses_bad_buckets_before_anything_is_built():
    with pytest.raises(GraftError, match=r"buckets=\[3, 1\]"):
        hand_plan(tiny_profile(), ((0, 1),), buckets=[3, 1])


# Bucket lists the planner can and cannot use.

@pytest.mark.parametrize("buckets", [4, "1,2,4"], ids=["int", "str"])
def test_the_planner_refuses_what_is_no_bucket_list_and_says_what_to_pass(buckets):
    """Found by review: ``buckets=8`` raised a bare TypeError, and ``"1,2,4"`` was read as
    characters."""
    with pytest.raises(GraftError, match=r"expected a sequence of batch sizes such as \[1, 2, 4, 8\]"):
        plan(FOUR, [Demand(0, 10.0, 0.01)], buckets=buckets)


def test_least_budget_checks_its_buckets():
    with pytest.raises(GraftError, match=r"buckets=\[0\]: expected positive batch sizes"):
        least_budget(FOUR, 0, [0])
    assert least_budget(FOUR, 0, [np.int64(2), np.int64(4)]) == least_budget(FOUR, 0, (2, 4))


FIRST_TOO_LARGE = r"bucket 128 \(the first\) exceeds the profile's largest measured batch 64: "


def test_a_first_bucket_beyond_the_measured_batches_is_refused_by_name():
    """Found by review: the planner said the fragment "cannot be served within its budget", and
    the simulator's search swallowed that into a row of dashes."""
    profile, costs = resnet50()
    assert profile.max_batch == 64
    with pytest.raises(GraftError, match=FIRST_TOO_LARGE):
        plan(profile, [Demand(3, 50.0, 0.2)], buckets=(128,))
    with pytest.raises(GraftError, match=FIRST_TOO_LARGE):
        least_budget(profile, 3, (128, 256))
    with pytest.raises(GraftError, match=FIRST_TOO_LARGE):
        Replanner(profile, {3: 0.2}, buckets=(128,))
    with pytest.raises(GraftError, match=FIRST_TOO_LARGE):
        Scenario(profile, costs, (), 1.0, buckets=(128,))


def test_later_buckets_beyond_the_measured_batches_are_planned_within_them():
    """Only the first bucket must be measured: with POWERS_OF_TWO (up to 256) on a profile
    measured to 64 rows, plans keep every padded batch within 64 rows."""
    profile, costs = resnet50()
    demands = [Demand(f, 300.0, 8 * least_budget(profile, f)) for f in (2, 6)]
    padded = plan(profile, demands, buckets=(32, 128))
    check_padded(profile.planning, demands, padded, (32, 128))
    assert Scenario(profile, costs, (), 1.0, buckets=POWERS_OF_TWO).buckets == POWERS_OF_TWO
