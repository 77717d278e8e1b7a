"""The simulator: every policy reports every figure, the bound is the lowest share, runs are
deterministic, re-planned policies reach a share, and bad scenarios are refused. The pieces it is
built from have their own tests (test_stream, test_pricing, test_routing, test_replay,
test_search, test_results)."""

import math
from dataclasses import replace
from functools import cache

import pytest

from graft_fx import GraftError
from graft_fx.serving.simulator import Scenario, simulate

from .scenarios import resnet50, scenario


@cache
def results():
    return {r.name: r for r in simulate(scenario())}


def test_every_policy_reports_every_figure_and_the_bound_is_lowest():
    res = results()
    assert list(res) == ["graft", "per-fragment", "full-model", "bound"]
    for name in ("graft", "per-fragment", "full-model"):
        r = res[name]
        assert r.share is not None and r.share > 0, name
        assert 0 < r.slo_attainment <= 1 and r.goodput_rps > 0
        assert r.p50_ms <= r.p99_ms <= 2000  # answered requests all met the 2 s SLO
        assert r.dropped + len(r.latencies_ms) == r.requests
        assert r.plan is not None and math.isclose(r.plan.total_share, r.share)
        assert r.attainable_attainment >= 0.99 and r.gpus == r.deployment.gpus >= math.ceil(r.share - 1e-9)
        assert r.extrapolated == any(g.extrapolated for g in r.plan.groups)
    assert all(res["bound"].share <= res[name].share for name in ("graft", "per-fragment", "full-model"))
    assert res["bound"].requests == res["graft"].requests == res["per-fragment"].requests
    assert set(res["bound"].to_json()) == {"name", "share", "gpus", "slo_attainment", "attainable_attainment",
                                           "goodput_rps", "p50_ms", "p99_ms", "dropped", "requests", "attainable",
                                           "extrapolated", "searched"}
    curve = res["graft"].to_json()["searched"]
    assert curve and curve == sorted(curve) and any(on_time >= 0.99 for _, on_time in curve)


def test_the_same_seed_gives_the_same_figures():
    again = {r.name: r.to_json() for r in simulate(scenario())}
    assert again == {name: r.to_json() for name, r in results().items()}


def test_replanned_policies_reach_a_share():
    replanned = {r.name: r for r in simulate(replace(scenario(), replan_s=2.0), ["graft", "per-fragment"])}
    assert all(r.share is not None and r.share > 0 for r in replanned.values())


def test_bad_scenarios_raise():
    with pytest.raises(GraftError, match="unknown policies"):
        simulate(scenario(), ["graft", "magic"])
    with pytest.raises(GraftError, match="target"):
        Scenario(*resnet50(), (), 1.0, target=1.5)
    with pytest.raises(GraftError, match="replan_s 0"):
        Scenario(*resnet50(), (), 1.0, replan_s=0)
