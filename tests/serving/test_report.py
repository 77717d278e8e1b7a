"""The report: it says how many requests any server could answer and why the rest cannot, names
plans by cut, and explains its columns."""

import numpy as np

from graft_fx.serving.partitions import DEVICES, green_contexts
from graft_fx.serving.planner import Group, Partition, Plan
from graft_fx.serving.report import attainability, describe_plan, why_unattainable
from graft_fx.serving.requests import Request
from graft_fx.serving.stream import Stream


def stream(uploads_s, attainable):
    n = len(uploads_s)
    requests = tuple(Request(1.0, 0.5, i, 0) for i in range(n))
    return Stream(requests, np.zeros(n), np.array(attainable), 10.0, np.full(n, 0.02), np.array(uploads_s))


def test_most_requests_attainable_is_one_plain_line():
    line = why_unattainable(attainability(stream([0.01] * 10, [True] * 10), 200.0))
    assert line == "10 of 10 requests (100.0%) can be answered in time by some server"


def test_when_the_upload_alone_exceeds_the_slo_the_report_says_so():
    s = stream([0.3, 0.3, 0.3, 0.05], [False, False, False, True])
    line = why_unattainable(attainability(s, 200.0))
    assert line.startswith("1 of 4 requests (25.0%)")
    assert "for 3 (75%) the upload alone exceeds the 200 ms SLO" in line and "median upload 300.0 ms" in line


def test_no_requests_at_all_is_said_plainly():
    assert why_unattainable(attainability(stream([], []), 200.0)).startswith("no requests")


def test_plans_are_described_by_cut_name_partition_and_turns():
    g = [Group((0, 2), 16 / 132, 2, 0.01, 0.002, 0.004, 0.05, 3.0),
         Group((3,), 8 / 132, 1, 0.02, 0.001, 0.002, 0.05, 1.0, extrapolated=True),
         Group((4,), 8 / 132, 1, 0.02, 0.001, 0.002, 0.05, 1.0, extrapolated=True)]
    the_plan = Plan(tuple(g), green_contexts(DEVICES["NVIDIA H200"]),
                    (Partition(16 / 132, (0,)), Partition(16 / 132, (0,)), Partition(8 / 132, (1, 2))))
    names = ["x", "relu_", "add_", "relu_9", "pool"]
    assert describe_plan(the_plan, names) == [
        "2 x 16 SMs: [x, add_], cycle 10.0 ms",
        "1 x 8 SMs*: [relu_9] + [pool] taking turns, cycle 20.0 ms"]
