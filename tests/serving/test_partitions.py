"""Partitions: the shares each mechanism can make on each device, as NVIDIA documents them."""

import pytest

from graft_fx import GraftError
from graft_fx.serving import partitions as P
from graft_fx.serving import roofline

H200 = P.DEVICES["NVIDIA H200"]


def sms(part):
    return [round(s * part.device.units) for s in part.shares]


def test_green_contexts_on_hopper_come_in_eights_and_the_whole_device():
    part = P.green_contexts(H200)
    assert sms(part) == [*range(8, 129, 8), 132]
    assert part.describe(part.shares[1]) == "16 SMs" and part.shared_context


@pytest.mark.parametrize("name, least, step", [("NVIDIA A100-SXM4-80GB", 4, 2), ("NVIDIA T4", 2, 2)])
def test_green_contexts_follow_the_architectures_granularity(name, least, step):
    device = P.DEVICES[name]
    got = sms(P.green_contexts(device))
    assert got[0] == least and got[-1] == device.units
    assert all(b - a == step for a, b in zip(got, got[1:-1]))


def test_mps_takes_whole_percentages_worth_one_sm_and_48_clients():
    t4 = P.mps(P.DEVICES["NVIDIA T4"])  # 40 SMs: 1% and 2% are less than one SM
    assert t4.shares[0] == 0.03 and t4.shares[-1] == 1.0 and t4.max_partitions == 48
    assert not t4.shared_context and t4.describe(0.25) == "25%"


def test_every_roofline_preset_gpu_has_a_partitioning():
    for acc in roofline.ACCELERATORS.values():
        if acc.name != "cpu":
            part = P.for_device(acc.description)
            assert part.mechanism == "green-context" and part.device.units == acc.units


def test_other_devices_plan_on_cores_or_percentages_without_memory():
    assert P.for_device("CPU (x, 2 cores, 2 threads)").mechanism == "cores"
    other = P.for_device("Some NPU")
    assert other.mechanism == "fraction" and len(other.shares) == 100 and other.device.memory_bytes is None


def test_bad_partitionings_are_refused():
    with pytest.raises(GraftError, match="share step"):
        P.steps(0.0)
    with pytest.raises(GraftError, match="mechanism"):
        P.for_device("NVIDIA H200", "mig")
    with pytest.raises(GraftError, match="ending at 1.0"):
        P.Partitioning(H200, "mps", (0.5, 0.75))
