"""Deployments: every partition on exactly one device, devices never over their SMs, clients or
memory, first-fit decreasing against its lower bound, and clear errors."""

import math

import pytest

from graft_fx import GraftError
from graft_fx.buckets import most_rows
from graft_fx.serving import partitions as P
from graft_fx.serving import profiles
from graft_fx.serving.deployment import deploy, memory_bytes
from graft_fx.serving.planner import Demand, Group, Partition, Plan, plan

RESNET = profiles.load(profiles.shipped()["h200"], "resnet50")
GREEN = P.green_contexts(P.DEVICES["NVIDIA H200"])


def group(fragment, share, replicas=1):
    return Group((fragment,), share, replicas, 0.01, 0.001, 0.002, 0.05, 1.0)


def check(d, the_plan):
    placed = sorted((p.share, p.groups) for dev in d.devices for p in dev.partitions)
    assert placed == sorted((p.share, p.groups) for p in the_plan.partitions)
    for dev in d.devices:
        assert dev.share <= 1 + 1e-9
        if d.partitioning.max_partitions:
            assert len(dev.partitions) <= d.partitioning.max_partitions
        if d.memory_checked:
            assert dev.memory_bytes <= d.partitioning.device.memory_bytes
    assert d.gpus >= d.least_devices == math.ceil(the_plan.total_share - 1e-9)


def test_seventeen_eight_sm_partitions_need_two_h200s():
    the_plan = Plan((group(3, 8 / 132, replicas=17),), GREEN)
    d = deploy(the_plan, RESNET)
    check(d, the_plan)
    assert [len(dev.partitions) for dev in d.devices] == [16, 1] and d.memory_checked


def test_mps_clients_cap_a_device_at_48_partitions():
    mps = P.mps(P.DEVICES["NVIDIA H200"])
    the_plan = Plan((group(10, 0.01, replicas=49),), mps)
    d = deploy(the_plan, RESNET)
    check(d, the_plan)
    assert [len(dev.partitions) for dev in d.devices] == [48, 1]


def test_memory_limits_a_device_and_is_charged_per_context():
    one = memory_bytes(RESNET, Plan((group(0, 32 / 132),), GREEN), Partition(32 / 132, (0,)))
    assert one > sum(p.weight_bytes for p in RESNET.pieces)  # weights, and activations for 64 rows
    small = P.green_contexts(P.Device("small", 132, 2 * one + P.CONTEXT_BYTES, (9, 0)))
    the_plan = Plan((group(0, 32 / 132, replicas=3),), small)
    d = deploy(the_plan, RESNET)
    check(d, the_plan)
    assert [len(dev.partitions) for dev in d.devices] == [2, 1]  # three would fit the SMs, not the memory


def test_time_shared_groups_hold_every_members_weights_and_one_batch():
    the_plan = Plan((group(0, 32 / 132), group(9, 32 / 132)), GREEN, (Partition(32 / 132, (0, 1)),))
    both = memory_bytes(RESNET, the_plan, the_plan.partitions[0])
    weights = sum(p.weight_bytes for p in RESNET.pieces) + sum(p.weight_bytes for p in RESNET.pieces[9:])
    assert both == weights + RESNET.max_batch * max(p.workspace_bytes for p in RESNET.pieces)


def test_a_padded_plan_holds_activations_for_the_most_rows_its_batches_can_pad_to():
    """A batch of max_batch requests of two types pads to up to 96 rows with powers of two (33
    and 31 requests pad to 64 and 32), so the partition holds activations for 96 rows."""
    members = Group((0, 9), 32 / 132, 1, 0.01, 0.001, 0.002, 0.05, 1.0)
    unpadded = Plan((members,), GREEN)
    padded = Plan((members,), GREEN, buckets=(1, 2, 4, 8, 16, 32, 64))
    workspace = max(p.workspace_bytes for p in RESNET.pieces)
    assert RESNET.max_batch == 64 and most_rows(64, padded.buckets, 2) == 96
    grown = memory_bytes(RESNET, padded, padded.partitions[0]) - memory_bytes(RESNET, unpadded, unpadded.partitions[0])
    assert grown == (96 - 64) * workspace


def test_plan_records_the_buckets_it_was_priced_with():
    demands = [Demand(0, 200.0, 0.2), Demand(9, 300.0, 0.2)]
    assert plan(RESNET, demands).buckets is None
    assert plan(RESNET, demands, buckets=[1, 2, 4, 8]).buckets == (1, 2, 4, 8)


def test_a_partition_larger_than_a_device_is_refused():
    tiny = P.green_contexts(P.Device("tiny", 132, 1 << 20, (9, 0)))
    with pytest.raises(GraftError, match="fit on one device"):
        deploy(Plan((group(0, 32 / 132),), tiny), RESNET)


def test_planned_deployments_of_the_shipped_profile():
    demands = [Demand(f, r, b) for f, r, b in [(0, 300.0, 0.05), (4, 80.0, 0.04), (9, 500.0, 0.03), (10, 20.0, 0.1)]]
    for realign in (True, False):
        the_plan = plan(RESNET, demands, realign)
        check(deploy(the_plan, RESNET), the_plan)


def test_profiles_without_memory_figures_pack_on_shares_alone():
    bare = profiles.from_json({"batches": [1], "models": {"m": {"pieces": [
        {"from": "x", "to": "output", "flops_share": 1.0, "activation_bytes": 4, "row_shape": [1],
         "latency_ms": {"1.0": {"1": 1.0}}}]}}}, "m")
    d = deploy(Plan((group(0, 64 / 132, replicas=3),), GREEN), bare)
    assert not d.memory_checked and d.gpus == 2


def test_a_plan_refuses_partitions_its_gpu_cannot_make():
    with pytest.raises(GraftError, match="expected shares that green-context on NVIDIA H200"):
        Plan((group(0, 66 / 132),), GREEN)
