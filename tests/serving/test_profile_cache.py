"""The cached CPU profile: measured once, read back after, measured again whenever the key
changes or the file cannot be trusted; and `resolve.profile_for("cpu", ...)` goes through it."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from graft_fx.serving import measure, profile_cache, resolve


def net(width: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(width * 4, 5)).eval()


EXAMPLE = torch.randn(1, 3, 6, 6)


@pytest.fixture
def counted(monkeypatch):
    """`measure.measure` made quick (one run per cell) and counted."""
    calls = []
    real = measure.measure

    def quick(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **{**kwargs, "reps": 1, "warmup": 0, "pieces": 2})

    monkeypatch.setattr(measure, "measure", quick)
    return calls


def test_measured_once_then_read_from_the_cache(tmp_path, counted):
    first = profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=tmp_path)
    threads = torch.get_num_threads()
    assert len(counted) == 1
    assert counted[0]["cores"] == list(range(1, threads + 1)) and counted[0]["batches"] == (1, 2, 4, 8)
    assert counted[0]["reps"] == 5 and counted[0]["warmup"] == 2 and counted[0]["device"] == "cpu"
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("tiny-cpu-")
    assert json.loads(files[0].read_text())["cache_key"]["fingerprint"] == profile_cache.fingerprint(net(), EXAMPLE)
    second = profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=tmp_path)
    assert len(counted) == 1
    np.testing.assert_allclose(second.shares, np.arange(1, threads + 1) / threads)
    assert second.batches.tolist() == [1, 2, 4, 8] and second.pieces == first.pieces
    np.testing.assert_array_equal(second.latency_s, first.latency_s)
    np.testing.assert_array_equal(second.p99_s, first.p99_s)
    assert files[0].name in second.source and second.device == measure.device_name("cpu")


@pytest.mark.parametrize("change", ["name", "structure", "example", "mode", "cpu", "reps", "torch"])
def test_a_changed_key_measures_again(tmp_path, counted, monkeypatch, change):
    profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=tmp_path)
    name, model, example = "tiny", net(), EXAMPLE
    if change == "name":
        name = "tiny2"
    elif change == "structure":
        model = net(width=5)
    elif change == "example":
        example = torch.randn(1, 3, 8, 8)
    elif change == "mode":
        model = net().train()
    elif change == "cpu":
        monkeypatch.setattr(measure, "device_name", lambda device: "CPU (another one)")
    elif change == "reps":
        monkeypatch.setattr(profile_cache, "REPS", 7)
    else:
        monkeypatch.setattr(torch, "__version__", "0.0.0")
    profile_cache.measured_here(name, model, example, cache_dir=tmp_path)
    assert len(counted) == 2 and len(list(tmp_path.glob("*.json"))) == 2


def test_weights_are_not_part_of_the_key(tmp_path, counted):
    profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=tmp_path)
    other = net()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1)
    profile_cache.measured_here("tiny", other, EXAMPLE, cache_dir=tmp_path)
    assert len(counted) == 1


@pytest.mark.parametrize("corrupt", ["not json {", '{"models": {}}', "", "wrong shares"])
def test_a_corrupt_file_is_measured_again_and_replaced(tmp_path, counted, corrupt):
    profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    if corrupt == "wrong shares":
        doc = json.loads(path.read_text())
        for piece in doc["models"]["tiny"]["pieces"]:
            for field in ("latency_ms", "latency_p99_ms"):
                piece[field] = {"1.0": piece[field]["1.0"]}
        corrupt = json.dumps(doc)
        if torch.get_num_threads() == 1:
            pytest.skip("one thread: a profile of the whole machine is all the cache holds")
    path.write_text(corrupt)
    with pytest.warns(UserWarning, match="measuring again"):
        again = profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=tmp_path)
    assert len(counted) == 2 and len(again.shares) == torch.get_num_threads()
    profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=tmp_path)
    assert len(counted) == 2  # the rewritten file is trusted


def test_the_cache_directory_comes_from_the_environment(tmp_path, counted, monkeypatch):
    monkeypatch.setenv("GRAFT_FX_CACHE", str(tmp_path / "env"))
    assert profile_cache.cache_root() == tmp_path / "env"
    assert profile_cache.cache_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("GRAFT_FX_CACHE")
    assert profile_cache.cache_root().parts[-3:] == (".cache", "graft_fx", "profiles")


def test_resolve_cpu_uses_the_cache(tmp_path, counted, monkeypatch):
    monkeypatch.setenv("GRAFT_FX_CACHE", str(tmp_path))
    steps = []
    first = resolve.profile_for("cpu", "tiny", net(), EXAMPLE, progress=steps.append)
    second = resolve.profile_for("cpu", "tiny", net(), EXAMPLE, progress=steps.append)
    assert len(counted) == 1 and sum(steps) == first.latency_s.size
    assert len(list(tmp_path.glob("tiny-cpu-*.json"))) == 1
    np.testing.assert_array_equal(first.latency_s, second.latency_s)


def test_an_unwritable_directory_warns_and_still_returns_the_profile(tmp_path, counted):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not cache"):
        p = profile_cache.measured_here("tiny", net(), EXAMPLE, cache_dir=blocker / "sub")
    assert p.source == "measured" and len(counted) == 1
