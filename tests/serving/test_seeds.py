"""One scenario over seeds: medians and paired ratios per policy, and runs too short to trust."""

from functools import cache

import pytest

from graft_fx import GraftError
from graft_fx.serving import bundled, profiles, zoo
from graft_fx.serving.devices import DEVICES
from graft_fx.serving.seeds import check_duration, over_seeds
from graft_fx.serving.simulator import Scenario
from graft_fx.serving.workload import make_clients, model_costs


@cache
def resnet50():
    model, example = zoo.build("resnet50")
    return profiles.load(profiles.shipped()["h200"], "resnet50"), model_costs(model, example)


def scenario(seed, duration_s=10.0, slo_s=0.5):
    profile, costs = resnet50()
    phones = make_clients(40, DEVICES.values(), [bundled("lte-verizon-up")], 2.0, slo_s, seed=seed)
    return Scenario(profile, costs, tuple(phones), duration_s, seed)


def test_each_policy_is_summarised_over_its_seeds_with_paired_ratios():
    summaries, (stream,) = over_seeds(scenario, [0, 1, 2], ["graft", "per-fragment"])
    graft, apart = summaries
    assert [s.name for s in summaries] == ["graft", "per-fragment"] and len(stream.requests) > 0
    assert len(graft.results) == len(apart.results) == 3 and graft.reached == 3
    assert graft.share.low <= graft.share.value <= graft.share.high
    assert graft.vs_graft.value == graft.vs_graft.low == graft.vs_graft.high == 1.0
    ratios = sorted(a.share / g.share for a, g in zip(apart.results, graft.results))
    assert apart.vs_graft.value == ratios[1] and (apart.vs_graft.low, apart.vs_graft.high) == (ratios[0], ratios[2])
    assert apart.to_json()["vs_graft"]["n"] == 3


def test_runs_shorter_than_ten_slos_are_refused():
    check_duration(scenario(0, duration_s=5.0))
    with pytest.raises(GraftError, match="expected at least 10 times the SLO"):
        check_duration(scenario(0, duration_s=4.0))
    with pytest.raises(GraftError, match="no seeds"):
        over_seeds(scenario, [])
