"""The ResNet-50 scenario the simulator's tests replay: its shipped H200 profile, phones on an LTE
trace with a 2 s SLO, and its request stream, built once per session."""

from functools import cache

from graft_fx.serving import bundled, profiles, zoo
from graft_fx.serving.simulator import Scenario
from graft_fx.serving.stream import Stream, make_stream
from graft_fx.serving.workload import DEVICES, make_clients, model_costs


@cache
def resnet50():
    model, example = zoo.build("resnet50")
    return profiles.load(profiles.shipped()["h200"], "resnet50"), model_costs(model, example)


def scenario(clients=60, slo_s=2.0, duration_s=10.0, seed=0) -> Scenario:
    profile, costs = resnet50()
    phones = make_clients(clients, DEVICES.values(), [bundled("lte-verizon-up")], 2.0, slo_s, seed=seed)
    return Scenario(profile, costs, tuple(phones), duration_s, seed)


@cache
def stream(seed=0) -> Stream:
    """The default scenario's request stream (streams are immutable: tests share it)."""
    return make_stream(scenario(seed=seed))
