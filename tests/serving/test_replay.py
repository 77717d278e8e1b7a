"""Replay: every request answered on time or dropped once, by the plan in force when it arrives,
and a plan's instances are the batching queues its routing feeds."""

import numpy as np
import pytest

from graft_fx.serving.batching import run_offline, run_shared
from graft_fx.serving.planner import Group, Partition, Plan
from graft_fx.serving.pricing import group_latency
from graft_fx.serving.replay import Epoch, run_epochs, run_plan
from graft_fx.serving.search import least_share

from .scenarios import resnet50, scenario, stream


def group(fragments, share=1.0, replicas=1):
    return Group(tuple(fragments), share, replicas, 0.01, 0.001, 0.001, 1.0, 1.0)


def test_each_request_is_answered_on_time_or_dropped_exactly_once():
    sc, s = scenario(), stream()
    best, _ = least_share(s, sc.profile, True, 0.99)
    answered = ~np.isnan(best.finish_s)
    deadlines = np.array([r.deadline_s for r in s.requests])
    arrivals = np.array([r.arrival_s for r in s.requests])
    assert np.all(best.finish_s[answered] <= deadlines[answered])
    assert np.all(best.finish_s[answered] > arrivals[answered])


def test_a_plan_that_serves_nothing_drops_everything_it_was_sent():
    profile, s = resnet50()[0], stream()
    only = sorted({r.fragment for r in s.requests})[-1]
    the_plan = Plan((Group((only,), 1.0, 1, 0.01, 0.001, 0.001, 1.0, 1.0),))
    run = run_plan(s, profile, the_plan)
    served = np.array([r.fragment == only for r in s.requests])
    assert np.all(np.isnan(run.finish_s[~served]))
    assert not np.all(np.isnan(run.finish_s[served]))


def test_each_request_is_served_by_the_plan_in_force_when_it_arrives():
    profile, s = resnet50()[0], stream()
    types = tuple(sorted({r.fragment for r in s.requests}))
    everything = Plan((Group(types, 1.0, 1, 0.01, 0.001, 0.001, 1.0, 1.0),))
    run = run_epochs(s, profile, [Epoch(0.0, everything), Epoch(5.0, Plan(()))])
    late = np.array([r.arrival_s >= 5.0 for r in s.requests])
    assert np.all(np.isnan(run.finish_s[late])) and not np.all(np.isnan(run.finish_s[~late]))
    assert run.total_share == pytest.approx(5.0 / run.end_s)
    assert run.plan is (everything if run.end_s < 10.0 else run.epochs[1].plan)


def test_a_groups_replicas_serve_its_requests_in_turn_and_time_shared_groups_take_turns():
    """The replay is the batching queues fed by the router: replica r of a group of n replicas
    gets its arrivals ``[r::n]``, and groups listed on one partition run as `run_shared`."""
    profile, s = resnet50()[0], stream()
    types = sorted({r.fragment for r in s.requests})
    a, b = tuple(types[: len(types) // 2]), tuple(types[len(types) // 2:])
    the_plan = Plan((group(a, 0.5, 2), group(b, 0.5, 1)),
                    partitions=(Partition(0.5, (0,)), Partition(0.5, (0, 1))))
    run = run_plan(s, profile, the_plan)
    of_a = [r for r in s.requests if r.fragment in a]
    of_b = [r for r in s.requests if r.fragment in b]
    latency_a = group_latency(profile, sorted({r.fragment for r in of_a}), 0.5)
    latency_b = group_latency(profile, sorted({r.fragment for r in of_b}), 0.5)
    expected = np.full(len(s.requests), np.nan)
    outcomes = [run_offline(of_a[0::2], latency_a, profile.max_batch),
                *run_shared([(of_a[1::2], latency_a), (of_b, latency_b)], profile.max_batch)]
    for outcome in outcomes:
        for request_id, t in outcome.completed_s().items():
            expected[request_id] = t
    np.testing.assert_array_equal(run.finish_s, expected)
    assert not np.all(np.isnan(run.finish_s))
