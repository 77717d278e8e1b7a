"""Measured profiles on the CPU: their shape, positive times, p99 over the median, progress
reporting, and the JSON document (by share fraction, and by SM count as a GPU run writes it)."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from graft_fx import GraftError
from graft_fx.serving import profiles
from graft_fx.serving.measure import calibrate, device_name, document, measure
from graft_fx.serving.profiles import Piece, Profile


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


EXAMPLE = torch.randn(1, 3, 6, 6)


@pytest.fixture(scope="module")
def measured() -> tuple[Profile, list[int]]:
    steps = []
    p = measure(net(), EXAMPLE, "tiny", pieces=3, batches=(4, 1, 2), reps=3, warmup=1, progress=steps.append)
    return p, steps


def test_a_measured_profile_has_one_cell_per_piece_share_and_batch(measured):
    p, steps = measured
    assert p.source == "measured" and p.model == "tiny"
    assert p.device.startswith("CPU (") and "threads" in p.device
    assert p.batches.tolist() == [1, 2, 4] and p.shares.tolist() == [1.0]
    assert p.latency_s.shape == (len(p.pieces), 1, 3) and len(p.pieces) >= 3
    assert np.all(p.latency_s > 0) and np.all(np.isfinite(p.latency_s))
    assert p.p99_s is not None and np.all(p.p99_s >= p.latency_s)
    assert sum(steps) == p.latency_s.size and set(steps) == {1}
    assert {"torch", "dtype", "timing"} <= set(p.meta) and p.meta["dtype"] == "float32"
    assert "perf_counter" in p.meta["timing"] and "median" in p.meta["timing"]


def test_progress_can_be_a_tqdm_like_bar_whose_total_grows():
    class Bar:
        def __init__(self):
            self.total, self.n = 0, 0

        def update(self, n):
            self.n += n

    bar = Bar()
    p = measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1,), reps=1, warmup=0, progress=bar)
    assert bar.n == bar.total == len(p.pieces)


def test_sm_shares_are_refused_on_a_cpu():
    with pytest.raises(GraftError, match="CUDA"):
        measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1,), reps=1, warmup=0, sms=[16])


def test_the_model_stays_usable_and_where_it_was(measured):
    model = net()
    measure(model, EXAMPLE, "tiny", pieces=2, batches=(1,), reps=1, warmup=0)
    assert all(t.device.type == "cpu" for t in model.parameters())
    assert model(EXAMPLE).shape == (1, 5)


def test_the_document_reads_back_as_the_same_profile(measured):
    p, _ = measured
    doc = json.loads(json.dumps(document([p], models_extra={"tiny": {"input_side": 6}})))
    assert doc["models"]["tiny"]["input_side"] == 6 and doc["sm_count"] is None
    back = profiles.from_json(doc, "tiny")
    assert back.pieces == p.pieces and back.device == p.device
    np.testing.assert_allclose(back.latency_s, p.latency_s, rtol=1e-9)
    np.testing.assert_allclose(back.p99_s, p.p99_s, rtol=1e-9)


def test_a_gpu_document_is_keyed_by_sm_count_with_zero_for_the_whole_device():
    pieces = (Piece("x", "a", 0.5, 12, (3,)), Piece("a", "output", 0.5, 8, (2,)))
    latency = np.array([[[2.0, 3.0], [1.0, 1.5]], [[4.0, 6.0], [2.0, 3.0]]]) * 1e-3
    p = Profile("toy", "NVIDIA H200", "measured", pieces, np.array([16 / 132, 1.0]), np.array([1, 2]),
                latency, latency * 1.1, {"sm_count": 132, "sm_counts": [16, 0], "torch": "x",
                                         "raw_latency_s": latency.tolist()})
    doc = document([p])
    assert doc["sm_count"] == 132 and set(doc["models"]["toy"]["pieces"][0]["latency_ms"]) == {"16", "0"}
    assert doc["models"]["toy"]["pieces"][1]["latency_ms"]["16"]["2"] == pytest.approx(6.0)
    back = profiles.from_json(doc, "toy")
    np.testing.assert_allclose(back.shares, p.shares)
    np.testing.assert_allclose(back.latency_s, p.latency_s)


def test_device_names():
    assert device_name("cpu").startswith("CPU (") and f"{torch.get_num_threads()} threads" in device_name("cpu")


def test_precision_is_measured_and_recorded(measured):
    p, _ = measured
    assert p.meta["precision"].startswith("default: ") and p.meta["precision"] in p.label
    bf16 = measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1,), reps=1, warmup=0, precision="bf16")
    assert bf16.meta["dtype"] == "bfloat16" and bf16.meta["precision"].startswith("bf16: ")
    assert next(net().parameters()).dtype == torch.float32  # the user's model is left as it was
    doc = document([bf16])
    assert doc["precision"] == bf16.meta["precision"]
    assert profiles.from_json(doc, "tiny").meta["precision"] == bf16.meta["precision"]
    with pytest.raises(GraftError, match="precision 'fp8'"):
        measure(net(), EXAMPLE, "tiny", precision="fp8")


def test_measured_pieces_carry_their_memory_figures(measured):
    p, _ = measured
    weights = sum(t.numel() * 4 for t in net().parameters())
    assert sum(piece.weight_bytes for piece in p.pieces) == weights
    assert all(piece.workspace_bytes > 0 for piece in p.pieces)
    loaded = profiles.from_json(document([p]), "tiny")
    assert [x.weight_bytes for x in loaded.pieces] == [x.weight_bytes for x in p.pieces]


def test_cpu_shares_are_thread_counts_and_the_count_is_restored(monkeypatch):
    total = torch.get_num_threads()
    seen = []
    real = torch.set_num_threads

    def spy(k):
        seen.append(k)
        real(k)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    p = measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1, 2), reps=1, warmup=0, cores=[total, 1])
    assert torch.get_num_threads() == total
    assert p.meta["cores"] == sorted({1, total}) and p.meta["sm_counts"] is None
    np.testing.assert_allclose(p.shares, [k / total for k in sorted({1, total})])
    assert p.latency_s.shape == (len(p.pieces), len(p.shares), 2)
    assert 1 in seen and seen[-1] == total  # timed on one thread, then put back
    assert f"of {total} threads" in p.meta["timing"]
    back = profiles.from_json(json.loads(json.dumps(document([p]))), "tiny")
    np.testing.assert_allclose(back.shares, p.shares)
    np.testing.assert_allclose(back.latency_s, p.latency_s, rtol=1e-9)


def test_the_default_cpu_share_is_all_threads(measured):
    p, _ = measured
    assert p.meta["cores"] == [torch.get_num_threads()] and p.shares.tolist() == [1.0]


@pytest.mark.parametrize("cores", [[0], [torch.get_num_threads() + 1], []])
def test_thread_counts_outside_the_machine_are_refused(cores):
    with pytest.raises(GraftError, match="cores="):
        measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1,), reps=1, warmup=0, cores=cores)


def test_calibration_brings_a_stale_profile_to_this_machines_speed(measured):
    """A profile 1000x too fast for this machine comes back scaled up by its shares' factors,
    median and p99 alike, and says so; the shape of the table is kept."""
    profile, _ = measured
    stale = profile.scaled(np.full(len(profile.shares), 1e-3), "pretend it was measured on a far faster day")
    steps = []
    now = calibrate(stale, net(), EXAMPLE, reps=3, progress=steps.append)
    factors = np.array(now.meta["scaled"])
    assert factors.shape == profile.shares.shape and np.all(factors > 50)
    assert "calibrated to this device now" in now.source and sum(steps) == 2 * len(profile.shares)
    np.testing.assert_allclose(now.latency_s, stale.latency_s * factors[None, :, None], rtol=1e-9)
    np.testing.assert_allclose(now.p99_s, np.asarray(stale.p99_s) * factors[None, :, None], rtol=1e-9)


def test_a_profile_scales_only_by_one_positive_factor_per_share(measured):
    profile, _ = measured
    with pytest.raises(GraftError, match="one positive number per share"):
        profile.scaled([1.0] * (len(profile.shares) + 1), "too many")
    with pytest.raises(GraftError, match="one positive number per share"):
        profile.scaled([0.0] * len(profile.shares), "zero")


def test_a_compiled_executor_times_each_piece_compiled_once_per_batch_size(monkeypatch):
    """The executor wraps each piece once; each batch size compiles outside the timed runs (a
    counting backend stands in for Inductor, whose compile is slow on a small CPU)."""
    from graft_fx.serving import measure as measuring

    compiles = []

    def counting(gm, example_inputs):
        compiles.append(tuple(example_inputs[-1].shape) if example_inputs else ())
        return gm.forward

    monkeypatch.setitem(measuring.EXECUTORS, "compiled",
                        lambda module: torch.compile(module, backend=counting, dynamic=False))
    torch._dynamo.reset()
    p = measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1, 2, 4), reps=3, warmup=1, executor="compiled")
    torch._dynamo.reset()
    assert p.meta["executor"] == "compiled"
    assert len(compiles) == len(p.pieces) * 3  # one graph per piece and batch size: none while timed
    assert np.all(p.latency_s > 0)


def test_cuda_graphs_are_refused_on_a_cpu_and_unknown_executors_everywhere():
    with pytest.raises(GraftError, match="cudagraphs on CUDA only"):
        measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1,), reps=1, executor="cudagraphs")
    with pytest.raises(GraftError, match="executor 'tvm'"):
        measure(net(), EXAMPLE, "tiny", pieces=2, batches=(1,), reps=1, executor="tvm")
