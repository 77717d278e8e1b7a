"""The least-share search: it reaches its target, finds the cheapest plan that does without
assuming success grows with headroom, re-plans by windows, and graft never needs more than
per-fragment."""

from graft_fx.serving import partitions
from graft_fx.serving.planner import least_budget
from graft_fx.serving.replay import run_epochs
from graft_fx.serving.search import ALPHAS, QUANTILES, _candidates, demands, epochs_for, least_share
from graft_fx.serving.stream import make_stream

from .scenarios import resnet50, scenario, stream


def test_the_chosen_share_answers_the_target_of_attainable_requests_on_time():
    sc, s = scenario(), stream()
    best, runs = least_share(s, sc.profile, True, 0.99)
    assert best in runs
    on_time = best.on_time(s) & s.attainable
    assert on_time.sum() >= 0.99 * s.attainable.sum()
    reached = [r for r in runs if (r.on_time(s) & s.attainable).sum() >= 0.99 * s.attainable.sum()]
    assert best.total_share == min(r.total_share for r in reached)


def test_the_search_finds_the_cheapest_plan_that_reaches_the_target_without_assuming_monotone():
    """Brute force: simulate every candidate plan; the search's pick is the least share among
    those that reach the target, with the best attainment among plans of that share."""
    sc, s = scenario(), stream()
    best, runs = least_share(s, sc.profile, True, 0.99)
    need = 0.99 * s.attainable.sum()
    every = [run_epochs(s, sc.profile, e) for _, e in _candidates(s, sc.profile, True, QUANTILES,
                                                                  partitions.for_device(sc.profile.device), None)]
    on_time = [int((r.on_time(s) & s.attainable).sum()) for r in every]
    reached = [(r.total_share, -n) for r, n in zip(every, on_time) if n >= need]
    assert best is not None and reached
    assert (best.total_share, -int((best.on_time(s) & s.attainable).sum())) == min(reached)
    assert len(runs) <= len(every)


def test_demands_plan_the_attainable_requests_at_their_budget_quantile_never_below_the_least_budget():
    profile, s = resnet50()[0], stream()
    rates = s.rates(attainable_only=True)
    made = demands(s, profile, 0.5, alpha=2.0)
    assert [d.fragment for d in made] == sorted(s.attainable_budgets)
    for d in made:
        assert d.rate_per_s == 2.0 * rates[d.fragment] and d.budget_s >= least_budget(profile, d.fragment)
    assert ALPHAS[0] == 1.0 and ALPHAS[-1] == 64.0 and list(ALPHAS) == sorted(ALPHAS)


def test_replanning_follows_the_windows_and_keeps_every_type_planned():
    sc, s = scenario(), stream()
    epochs = epochs_for(s, sc.profile, 0.01, 1.0, True, partitions.steps(0.01), replan_s=2.0)
    assert epochs[0].start_s == 0.0 and all(e.start_s % 2.0 == 0 for e in epochs)
    assert all(a.start_s < b.start_s for a, b in zip(epochs, epochs[1:]))
    planned = {d.fragment for d in demands(s, sc.profile, 0.01)}
    assert all({f for g in e.plan.groups for f in g.fragments} == planned for e in epochs)
    assert epochs_for(s, sc.profile, 0.01, 1.0, True, partitions.steps(0.01), None)[0].plan.total_share > 0


def test_graft_never_needs_more_share_than_per_fragment_on_one_stream():
    """The graft search sees every per-fragment plan too, so on the same stream its least share is
    at most per-fragment's, seed by seed."""
    for seed in (0, 1):
        sc = scenario(seed=seed)
        s = make_stream(sc)
        graft, _ = least_share(s, sc.profile, True, 0.99)
        apart, _ = least_share(s, sc.profile, False, 0.99)
        assert graft is not None and apart is not None
        assert graft.total_share <= apart.total_share + 1e-12
