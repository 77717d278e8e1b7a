"""The figures of a policy: read off the chosen run, or marked missing when no run reached the
target; several models' figures add up."""

import math

import numpy as np
import pytest

from graft_fx.serving.results import PolicyResult, combine, result
from graft_fx.serving.search import least_share

from .scenarios import resnet50, scenario, stream


def test_the_figures_of_the_chosen_run():
    sc, s = scenario(), stream()
    best, runs = least_share(s, sc.profile, True, 0.99)
    r = result("graft", s, best, runs, sc.profile)
    answered = ~np.isnan(best.finish_s)
    assert r.share == best.total_share and r.plan is best.plan and r.gpus == r.deployment.gpus
    assert r.requests == len(s.requests) and r.attainable == int(s.attainable.sum())
    assert r.dropped == int((~answered).sum()) and len(r.latencies_ms) == int(answered.sum())
    assert r.slo_attainment == pytest.approx(best.on_time(s).mean())
    assert r.goodput_rps == pytest.approx(best.on_time(s).sum() / s.duration_s)
    # end to end: from the phone starting the inference to the answer
    assert r.latencies_ms.min() >= 1e3 * float(np.min(s.device_s[answered] + s.upload_s[answered])) - 1e-6
    assert [share for share, _ in r.searched] == sorted(run.total_share for run in runs)
    assert r.model == sc.profile.model


def test_no_run_means_no_share_and_no_figures():
    profile, s = resnet50()[0], stream()
    r = result("graft", s, None, [], profile)
    assert r.share is r.slo_attainment is r.p99_ms is r.dropped is r.gpus is None
    assert r.requests == len(s.requests) and r.searched == ()


def part(share, requests, on_time, attainable, latencies_ms, model):
    return PolicyResult("graft", share, on_time, 10.0, None, None, 1, requests, attainable, on_time,
                        latencies_ms=np.array(latencies_ms), model=model)


def test_combined_models_add_up_and_weigh_attainment_by_requests():
    a = part(0.5, 100, 1.0, 80, [10.0, 20.0], "a")
    b = part(0.25, 300, 0.5, 20, [30.0], "b")
    profile = resnet50()[0]
    assert combine([a], [profile]) is a
    both = combine([a, b], [profile, profile])
    assert both.share == 0.75 and both.requests == 400 and both.attainable == 100 and both.dropped == 2
    assert both.goodput_rps == 20.0 and both.model == "a+b" and both.parts == (a, b)
    assert math.isclose(both.slo_attainment, (100 * 1.0 + 300 * 0.5) / 400)
    assert math.isclose(both.attainable_attainment, (80 * 1.0 + 20 * 0.5) / 100)
    assert list(both.latencies_ms) == [10.0, 20.0, 30.0] and both.p50_ms == 20.0
    assert both.deployment is None and both.gpus is None  # no plans to pack
    assert combine([a, part(None, 10, 0.0, 0, [], "c")], [profile, profile]).share is None
