"""Pricing: a realigned group's batch costs what the profile says its mix costs."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graft_fx.serving.pricing import group_latency
from graft_fx.serving.requests import Request

from .scenarios import resnet50


@given(st.lists(st.integers(0, 10), min_size=1, max_size=64), st.sampled_from([0.1, 0.37, 1.0]))
def test_group_latency_is_the_profiles_batch_latency(fragments, share):
    profile, _ = resnet50()
    batch = [Request(1.0, 0.0, i, f) for i, f in enumerate(fragments)]
    members = sorted(set(fragments))
    counts = {f: fragments.count(f) for f in members}
    assert group_latency(profile, members, share)(batch) == pytest.approx(profile.batch_s(counts, share))


def test_a_deeper_cut_costs_no_more_and_a_bigger_batch_no_less():
    profile, _ = resnet50()
    latency = group_latency(profile, [0, 5], 0.5)
    shallow, deep = Request(1.0, 0.0, 0, 0), Request(1.0, 0.0, 1, 5)
    assert latency([deep]) <= latency([shallow])
    assert latency([shallow, deep]) >= latency([shallow])
