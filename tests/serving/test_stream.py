"""The request stream: phones' cuts become profile fragment types, full-model phones send the raw
input, private-input phones never do, and attainability is the budget against the whole accelerator."""

from dataclasses import replace

import numpy as np
import pytest

from graft_fx import GraftError
from graft_fx.serving import zoo
from graft_fx.serving.stream import fragment_cuts, make_stream
from graft_fx.serving.workload import model_costs

from .scenarios import resnet50, scenario, stream


def test_full_model_sends_every_request_at_the_raw_input():
    full = make_stream(scenario(), full_model=True)
    assert {r.fragment for r in full.requests} == {0}
    assert len({r.fragment for r in stream().requests}) > 1


def test_private_input_phones_never_upload_the_raw_input():
    private = make_stream(replace(scenario(), private_input=True))
    assert 0 not in {r.fragment for r in private.requests} and len(private.requests) > 0


def test_each_fragment_type_is_its_profiles_cut_and_ids_are_positions():
    profile, costs = resnet50()
    cuts = fragment_cuts(profile, costs)
    assert [costs.cuts[c].name for c in cuts] == list(profile.fragments)
    s = stream()
    assert [r.id for r in s.requests] == list(range(len(s.requests)))
    assert len(s.send_s) == len(s.device_s) == len(s.upload_s) == len(s.requests)


def test_a_request_is_attainable_when_its_budget_covers_its_fragment_alone_on_the_whole_accelerator():
    profile, _ = resnet50()
    s = stream()
    alone = np.array([profile.fragment_s(r.fragment, 1, 1.0) for r in s.requests])
    budgets = np.array([r.budget_s for r in s.requests])
    assert np.array_equal(s.attainable, budgets >= alone)
    assert sum(s.rates(attainable_only=True).values()) == pytest.approx(s.attainable.sum() / s.duration_s)
    assert set(s.attainable_budgets) == set(s.fragment[s.attainable].tolist())


def test_the_same_seed_draws_the_same_requests_and_another_seed_others():
    assert make_stream(scenario()).requests == stream().requests
    assert [r.arrival_s for r in stream(seed=1).requests] != [r.arrival_s for r in stream().requests]


def test_a_profile_of_another_model_is_refused():
    model, example = zoo.build("mobilenet_v2")
    with pytest.raises(GraftError, match="another model"):
        fragment_cuts(resnet50()[0], model_costs(model, example))
