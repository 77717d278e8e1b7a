"""The planner: every plan meets its budgets when recomputed from its own profile, more load never
needs less share, re-alignment never needs more share than one instance per type (and on the H200
resnet50 profile strictly less), the fluid bound stays below every plan, errors, and re-planning.
"""

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from graft_fx import GraftError
from graft_fx.serving import partitions
from graft_fx.serving import profiles as P
from graft_fx.serving.planner import Demand, Group, Partition, Plan, Replanner, _share_weights, fluid_bound, plan
from graft_fx.serving.profiles import Piece, Profile

TOL = 1e-9
RESNET = P.load(P.shipped()["h200"], "resnet50")


def synthetic(launch, work, alpha=0.5, shares=(0.25, 0.5, 1.0), batches=(1, 2, 4, 8, 16)):
    """Piece i takes launch[i] + work[i] * rows / share ** alpha."""
    launch, work = np.asarray(launch, float), np.asarray(work, float)
    s, b = np.asarray(shares, float), np.asarray(batches)
    latency = launch[:, None, None] + work[:, None, None] * b[None, None, :] / s[None, :, None] ** alpha
    pieces = tuple(Piece(f"cut{i}", f"cut{i + 1}", 1 / len(launch), 1000, (10,)) for i in range(len(launch)))
    return Profile("synthetic", "synthetic", "synthetic", pieces, s, b, latency)


FOUR = synthetic([1e-4, 2e-4, 1e-4, 5e-5], [2e-5, 1e-5, 1e-5, 5e-6])


def least(profile, f):
    return profile.fragment_s(f, 1, 1.0)


def check(profile, demands, p):
    """Every group, recomputed from ``profile``, keeps up, fits its budget and stays within the
    measured batches; every demanded type is in exactly one group."""
    by_fragment = {d.fragment: d for d in demands}
    planned = sorted(f for g in p.groups for f in g.fragments)
    assert planned == sorted(by_fragment)
    for g in p.groups:
        assert list(g.fragments) == sorted(g.fragments)
        assert 0 < g.share <= 1 and g.replicas >= 1
        assert any(abs(g.share - s) < 1e-12 for s in p.partitioning.shares)  # a partition it can make
        assert g.extrapolated == (g.share < profile.shares[0] - 1e-12)
        assert g.budget_s == min(by_fragment[f].budget_s for f in g.fragments)
        rate = np.zeros(len(profile.pieces))
        for f in g.fragments:
            rate[f] = by_fragment[f].rate_per_s
        first = g.fragments[0]
        u = g.duty_cycle_s / g.replicas
        rows = np.cumsum(rate)[first:] * u
        assert rows[-1] == pytest.approx(g.rows, rel=TOL)
        assert rows[-1] + 1 <= profile.max_batch * (1 + TOL)
        latency = profile.pieces_s(rows + 1, g.share, first).sum()
        busy = profile.pieces_s(rows, g.share, first).sum()
        assert latency == pytest.approx(g.latency_s, rel=1e-9)
        assert busy == pytest.approx(g.busy_s, rel=1e-9)
        assert busy <= latency <= g.duty_cycle_s * (1 + TOL)
        assert g.duty_cycle_s + latency <= g.budget_s * (1 + TOL)
    check_partitions(p)


def check_partitions(p):
    """Every replica of every group has one partition of its share; groups that take turns on one
    partition share a duty cycle that holds all their batches and fits every member's budget."""
    seats = Counter(i for part in p.partitions for i in part.groups)
    assert seats == Counter({i: g.replicas for i, g in enumerate(p.groups)})
    for part in p.partitions:
        members = [p.groups[i] for i in part.groups]
        assert all(g.share == part.share for g in members)
        if len(members) > 1:
            cycle, turns = members[0].duty_cycle_s, sum(g.latency_s for g in members)
            assert all(g.replicas == 1 and g.duty_cycle_s == cycle for g in members)
            assert turns <= cycle * (1 + TOL)
            assert all(cycle + turns <= g.budget_s * (1 + TOL) for g in members)
    assert p.total_share == pytest.approx(sum(part.share for part in p.partitions))


# Random profiles and demands.

@st.composite
def profiles(draw):
    n = draw(st.integers(1, 6))
    launch = draw(st.lists(st.floats(1e-5, 1e-3), min_size=n, max_size=n))
    work = draw(st.lists(st.floats(1e-6, 1e-4), min_size=n, max_size=n))
    return synthetic(launch, work, draw(st.floats(0.0, 1.0)))


@st.composite
def cases(draw):
    """A profile and servable-looking demands: budgets a few times a type's one-row latency."""
    profile = draw(profiles())
    n = len(profile.pieces)
    fragments = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    demands = [Demand(f, draw(st.floats(1.0, 3000.0)), least(profile, f) * draw(st.floats(2.2, 12.0)))
               for f in fragments]
    return profile, demands


def plan_or_none(*args, **kwargs):
    try:
        return plan(*args, **kwargs)
    except GraftError:
        return None


@given(cases(), st.booleans())
def test_every_plan_meets_its_budgets_on_its_own_profile(case, realign):
    profile, demands = case
    p = plan_or_none(profile, demands, realign)
    assume(p is not None)
    check(profile, demands, p)
    assert fluid_bound(profile, {d.fragment: d.rate_per_s for d in demands}) <= p.total_share


@given(cases(), st.floats(1.0, 4.0), st.booleans())
def test_more_load_never_needs_less_share(case, k, realign):
    """Exact for the grouping DP; time sharing is a greedy packing on top, and nothing relies on
    it being monotone (the simulator's search scans)."""
    profile, demands = case
    base = plan_or_none(profile, demands, realign, time_sharing=False)
    assume(base is not None)
    scaled = plan_or_none(profile, [Demand(d.fragment, d.rate_per_s * k, d.budget_s) for d in demands],
                          realign, time_sharing=False)
    assert scaled is None or scaled.total_share >= base.total_share


@given(cases(), st.data(), st.booleans())
def test_raising_one_rate_never_needs_less_share(case, data, realign):
    profile, demands = case
    base = plan_or_none(profile, demands, realign)
    assume(base is not None)
    i = data.draw(st.integers(0, len(demands) - 1))
    more = list(demands)
    more[i] = Demand(demands[i].fragment, demands[i].rate_per_s * data.draw(st.floats(1.0, 10.0)),
                     demands[i].budget_s)
    raised = plan_or_none(profile, more, realign)
    assert raised is None or raised.total_share >= base.total_share


@given(cases())
def test_realignment_never_needs_more_share_than_one_instance_per_type(case):
    profile, demands = case
    alone = plan_or_none(profile, demands, realign=False)
    assume(alone is not None)
    together = plan(profile, demands, realign=True)
    assert together.total_share <= alone.total_share
    assert all(len(g.fragments) == 1 for g in alone.groups)


# The shipped H200 profiles.

@pytest.mark.parametrize("model", ["resnet50", "vgg16", "mobilenet_v2", "inception_v3", "vit_b_16"])
def test_plans_on_the_shipped_h200_profiles_meet_their_budgets(model):
    profile = P.load(P.shipped()["h200"], model)
    demands = [Demand(f, 50.0 * (1 + f % 3), 4 * least(profile, 0) + 1e-3 * f) for f in range(0, 11, 2)]
    for realign in (False, True):
        p = plan(profile, demands, realign)
        check(profile, demands, p)
        assert fluid_bound(profile, {d.fragment: d.rate_per_s for d in demands}) <= p.total_share


def test_realignment_needs_strictly_less_share_on_the_h200_resnet50():
    demands = [Demand(f, 150.0, 0.015) for f in (0, 2, 4, 6, 8, 10)]
    alone, together = plan(RESNET, demands, realign=False), plan(RESNET, demands)
    check(RESNET, demands, together)
    assert together.total_share < 0.8 * alone.total_share
    assert len(together.groups) < len(alone.groups)


def test_the_planners_share_interpolation_is_the_profiles():
    grid = np.round(np.arange(1, 101) * 0.01, 12)
    w = _share_weights(RESNET.shares, grid)
    mapped = np.einsum("gm,pmb->gpb", w, RESNET.latency_s)
    direct = np.stack([RESNET.table(float(s))[:, RESNET.batches] for s in grid])
    assert np.allclose(mapped, direct, rtol=1e-12, atol=0)


def test_a_hundred_types_plan():
    """The size the planner must handle in well under a second (timed in the report, not here)."""
    rng = np.random.default_rng(0)
    profile = synthetic(rng.uniform(5e-6, 15e-6, 100), rng.uniform(5e-7, 2e-6, 100), 0.7,
                        shares=(0.125, 0.25, 0.5, 1.0), batches=(1, 2, 4, 8, 16, 32, 64))
    demands = [Demand(f, rng.uniform(50, 500), rng.uniform(5e-3, 20e-3)) for f in range(100)]
    p = plan(profile, demands)
    check(profile, demands, p)
    assert p.total_share < plan(profile, demands, realign=False).total_share


# Small cases by hand.

def test_a_lone_type_at_a_low_rate_gets_a_small_share_and_one_replica():
    p = plan(FOUR, [Demand(2, 1.0, 0.01)])
    (g,) = p.groups
    assert g.fragments == (2,) and g.replicas == 1 and g.share <= 0.05
    assert p.group_of(2) == 0


def test_a_rate_beyond_one_accelerator_gets_replicas():
    rate = 3 / FOUR.pieces_s(np.full(4, 16.0), 1.0).sum() * 16  # three accelerators' worth at batch 16
    (g,) = plan(FOUR, [Demand(0, rate, 0.05)]).groups
    assert g.share * g.replicas > 1 and g.replicas > 1


def test_empty_demands_give_an_empty_plan():
    assert plan(FOUR, []).groups == () and plan(FOUR, []).total_share == 0


def test_plan_prints_a_table():
    p = plan(FOUR, [Demand(0, 100.0, 0.01), Demand(3, 100.0, 0.01)])
    text = str(p)
    assert "fragments" in text and "budget ms" in text and "10.000" in text
    assert text.splitlines()[-1] == f"total share {p.total_share:.2f}"


def test_a_plan_gives_each_replica_a_partition_unless_told_otherwise():
    g = Group((1, 2), 0.25, 3, 0.01, 0.004, 0.005, 0.02, 4.0)
    assert Plan((g,)).total_share == 0.75 and len(Plan((g,)).partitions) == 3
    h = Group((3,), 0.25, 1, 0.01, 0.001, 0.002, 0.02, 1.0)
    assert Plan((g, h), partitions=(Partition(0.5, (0,)),) * 3 + (Partition(0.25, (1,)),)).total_share == 1.75


# Errors.

def test_a_type_that_cannot_make_its_budget_alone_names_its_fragment_cut_and_latency():
    need = least(RESNET, 4)
    with pytest.raises(GraftError, match=r"fragment 4 \(cut 'relu__15'\).*expected a budget above"):
        plan(RESNET, [Demand(0, 10.0, 0.05), Demand(4, 10.0, 1.5 * need)])
    with pytest.raises(GraftError, match=f"{need * 1e3:.3f} ms"):
        plan(RESNET, [Demand(4, 10.0, need)], realign=False)


@pytest.mark.parametrize("demand, message", [
    (Demand(11, 1.0, 0.01), "expected a fragment index in 0..10"),
    (Demand(-1, 1.0, 0.01), "expected a fragment index"),
    (Demand(0, 0.0, 0.01), "expected a positive finite rate"),
    (Demand(0, -1.0, 0.01), "expected a positive finite rate"),
    (Demand(0, math.inf, 0.01), "expected a positive finite rate"),
    (Demand(0, math.nan, 0.01), "expected a positive finite rate"),
    (Demand(0, 1.0, 0.0), "expected a positive finite budget"),
    (Demand(0, 1.0, math.inf), "expected a positive finite budget"),
])
def test_bad_demands_are_refused(demand, message):
    with pytest.raises(GraftError, match=message):
        plan(RESNET, [demand])


def test_repeated_fragments_and_bad_share_steps_are_refused():
    with pytest.raises(GraftError, match=r"several demands for fragments \[3\]"):
        plan(RESNET, [Demand(3, 1.0, 0.01), Demand(3, 2.0, 0.02)])
    for step in (0.0, 1.5):
        with pytest.raises(GraftError, match="share step"):
            plan(RESNET, [Demand(3, 1.0, 0.01)], partitioning=partitions.steps(step))
    with pytest.raises(GraftError, match="expected a fragment index"):
        fluid_bound(RESNET, {12: 1.0})


def test_group_of_an_unplanned_fragment_is_an_error():
    p = plan(FOUR, [Demand(1, 10.0, 0.01)])
    with pytest.raises(GraftError, match=r"fragment 3 is not in the plan: it serves fragments \[1\]"):
        p.group_of(3)


# The fluid bound.

def test_the_fluid_bound_by_hand():
    # One piece, one share of 0.5 and a second of 1.0, batches 1 and 2: the cheapest row is
    # 0.5 * L(2, 0.5) / 2 = 0.5 * 0.3 / 2 = 0.075 share-seconds.
    profile = Profile("m", "d", "by hand", (Piece("x", "output", 1.0, 4, (1,)),), np.array([0.5, 1.0]),
                      np.array([1, 2]), np.array([[[0.2, 0.3], [0.15, 0.28]]]))
    assert fluid_bound(profile, {0: 10.0}) == pytest.approx(0.75)


def test_the_fluid_bound_counts_each_piece_once_for_every_type_that_runs_it():
    one = fluid_bound(FOUR, {0: 10.0})
    assert fluid_bound(FOUR, {0: 10.0, 3: 10.0}) > one
    assert fluid_bound(FOUR, {0: 10.0, 3: 0.0}) == one


# Re-planning.

def test_the_replanner_keeps_its_plan_under_small_drift_and_replans_beyond_it():
    r = Replanner(RESNET, {0: 0.015, 4: 0.015, 8: 0.015}, tolerance=0.2)
    first = r.observe({0: 100.0, 4: 100.0})
    assert first is not None and r.plan is first and r.rates == {0: 100.0, 4: 100.0}
    assert r.observe({0: 115.0, 4: 85.0}) is None and r.plan is first
    second = r.observe({0: 125.0, 4: 100.0})
    assert second is not None and r.plan is second
    assert r.observe({0: 125.0, 4: 100.0, 8: 5.0}) is not None          # a type appeared
    assert r.observe({0: 125.0, 4: 100.0, 8: 0.0}) is not None          # and left again
    assert [f for g in r.plan.groups for f in g.fragments] == [0, 4]


def test_a_new_budget_replans_at_the_next_observation():
    r = Replanner(RESNET, {0: 0.015, 4: 0.015})
    r.observe({0: 100.0, 4: 100.0})
    r.set_budget(4, 0.03)
    p = r.observe({0: 100.0, 4: 100.0})
    assert p is not None and p.groups[p.group_of(4)].budget_s in (0.015, 0.03)
    assert p == plan(RESNET, [Demand(0, 100.0, 0.015), Demand(4, 100.0, 0.03)])


def test_the_replanner_needs_a_budget_for_every_type_it_sees():
    r = Replanner(RESNET, {0: 0.015})
    with pytest.raises(GraftError, match=r"no budget for fragments \[5\]"):
        r.observe({0: 10.0, 5: 10.0})
    with pytest.raises(GraftError, match="tolerance"):
        Replanner(RESNET, {}, tolerance=-0.1)


@pytest.mark.parametrize("realign", [True, False])
def test_time_sharing_puts_light_groups_on_one_partition_and_never_costs_more(realign):
    """Four light types on 8-SM green contexts: alone each fills a partition; taking turns, they
    share some, and every shared partition still holds their batches within their budgets (with
    re-alignment they form one group, which needs no turns)."""
    demands = [Demand(f, 20.0, 0.2) for f in (0, 3, 6, 9)]
    alone = plan(RESNET, demands, realign, time_sharing=False)
    shared = plan(RESNET, demands, realign)
    check(RESNET, demands, shared)
    assert shared.total_share <= alone.total_share
    if not realign:
        assert any(len(p.groups) > 1 for p in shared.partitions)
        assert shared.total_share < alone.total_share


@given(st.lists(st.tuples(st.integers(0, 10), st.floats(0.5, 400.0), st.floats(0.03, 0.5)), min_size=1,
                max_size=6, unique_by=lambda d: d[0]))
def test_time_shared_plans_meet_their_budgets_and_realign_never_costs_more(raw):
    demands = [Demand(f, r, b) for f, r, b in raw]
    together = plan(RESNET, demands, time_sharing=True)
    apart = plan(RESNET, demands, realign=False, time_sharing=True)
    check(RESNET, demands, together)
    check(RESNET, demands, apart)
    assert together.total_share <= apart.total_share + 1e-12


def test_a_plan_seats_every_group_as_often_as_its_replicas():
    groups = (Group((0,), 0.5, 2, 0.01, 0.005, 0.01, 0.05, 1.0), Group((1,), 0.5, 1, 0.01, 0.005, 0.01, 0.05, 1.0))
    assert len(Plan(groups).partitions) == 3
    with pytest.raises(GraftError, match="seat groups"):
        Plan(groups, partitions=(Partition(0.5, (0,)), Partition(0.5, (1,))))
    with pytest.raises(GraftError, match="seat groups"):
        Plan(groups, partitions=(Partition(0.5, (0, 1)), Partition(0.5, (0, 2))))
