"""Replaying a stream through the runtime on the wall clock: every request answered once, its
outcome where the stream put it, the summary's figures consistent with each other."""

import numpy as np
import torch

from graft_fx.serving.loadgen import replay
from graft_fx.serving.requests import Request
from graft_fx.serving.stream import Stream

from .fixtures import sleepy_runtime


def stream_of(n: int, gap_s: float, budget_s: float, phone_s: float = 0.1) -> Stream:
    """n requests alternating between fragment types 0 and 1, ``gap_s`` apart, each ``phone_s``
    after its phone started, with ``budget_s`` on the server."""
    arrivals = np.arange(n) * gap_s
    requests = tuple(Request(a + budget_s, a, i, i % 2) for i, a in enumerate(arrivals))
    return Stream(requests, arrivals - phone_s, np.ones(n, dtype=bool), float(n * gap_s))


def test_replay_submits_every_request_on_time_and_waits_for_every_answer():
    stream = stream_of(200, 0.002, 0.3)
    answered = []
    with sleepy_runtime(budget_s=0.3) as runtime:
        measured = replay(runtime, stream, progress=answered.append)
    assert sum(answered) == 200 and measured.late_submits < 20
    summary = measured.summary(stream)
    assert summary["requests"] == 200 == summary["completed"] + summary["rejected"]
    assert summary["slo_attainment"] >= 0.95, summary
    on_time = measured.on_time(stream)
    assert on_time.sum() == round(summary["slo_attainment"] * 200)
    # end to end: from the phone starting (0.1 s before arrival) to the answer
    assert summary["p50_ms"] >= 100.0 and summary["p99_ms"] <= 100.0 + 300.0 + 50.0


def test_replay_counts_rejections_by_reason():
    stream = stream_of(300, 0.0005, 0.05)  # 2000/s against a capacity of about 700/s
    with sleepy_runtime(budget_s=0.05) as runtime:
        measured = replay(runtime, stream)
    summary = measured.summary(stream)
    assert summary["rejected"] == sum(summary["rejected_by_reason"].values()) > 0
    assert set(summary["rejected_by_reason"]) <= {"overloaded", "expired", "hopeless"}
    assert np.isnan(measured.finish_s).sum() == summary["rejected"]


def test_replay_gives_every_fragment_type_rows_of_its_own_shape():
    seen = []
    with sleepy_runtime(budget_s=0.5) as runtime:
        original = runtime.instances[0].run

        def run(fragments, rows):
            seen.extend((f, tuple(r.shape), r.dtype) for f, r in zip(fragments, rows))
            return original(fragments, rows)

        runtime.instances[0].run = run
        replay(runtime, stream_of(10, 0.001, 0.5))
    assert {(f, shape, dtype) for f, shape, dtype in seen} == {(0, (1, 4), torch.float32), (1, (1, 4), torch.float32)}
