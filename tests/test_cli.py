"""The `graft` command: `graft simulate` end to end on a small load, its JSON, plot and errors."""

import json
import subprocess
import sysconfig
from pathlib import Path

import pytest

from graft_fx.cli import main
from graft_fx.serving import profiles

SMALL = ["simulate", "--clients", "40", "--duration-s", "8", "--slo-ms", "500", "--rate", "2"]


def test_simulate_prints_the_table_and_writes_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert main([*SMALL, "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "profile: NVIDIA H200: measured, loaded from h200.json" in printed
    for policy in ("graft", "per-fragment", "full-model", "bound"):
        assert policy in printed
    doc = json.loads(out_json.read_text())
    assert doc["config"]["model"] == "resnet50" and doc["config"]["trace"] == "lte-ghent-car-7"
    assert {k: doc["config"][k] for k in ("cv", "upload", "jpeg_quality", "devices")} == {
        "cv": 1.0, "upload": "int8", "jpeg_quality": 90, "devices": "fitted"}
    assert [p["name"] for p in doc["policies"]] == ["graft", "per-fragment", "full-model", "bound"]
    for p in doc["policies"]:
        assert {"name", "share", "gpus", "slo_attainment", "attainable_attainment", "goodput_rps", "p50_ms",
                "p99_ms", "dropped", "requests", "attainable", "extrapolated"} <= set(p)
    graft = doc["policies"][0]
    assert graft["gpus"] >= 1 and graft["plan"]["groups"][0]["partition"].endswith(" SMs")
    assert all(isinstance(f, str) for g in graft["plan"]["groups"] for f in g["fragments"])  # cut names
    assert doc["requests"]["resnet50"]["requests"] >= doc["requests"]["resnet50"]["attainable"] and doc["columns"]
    assert "partitions: green-context on NVIDIA H200" in printed and "graft plan: " in printed
    assert "padding:" not in printed  # no --buckets, no padding
    assert "GPUs: whole devices" in printed  # the columns are explained
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_takes_a_profile_file_a_trace_file_and_chosen_policies(tmp_path, capsys):
    profile = profiles.load(profiles.shipped()["h200"], "mobilenet_v2")
    path = tmp_path / "mine.json"
    profile.save(path)
    trace = tmp_path / "trace.log"
    trace.write_text("".join(f"{t} {2.0 + t % 3}\n" for t in range(60)))
    out = tmp_path / "r.json"
    argv = [*SMALL, "--model", "mobilenet_v2", "--profile", str(path), "--trace", str(trace),
            "--trace-format", "pensieve", "--policies", "graft,bound", "--slo-ms", "800", "--replan-s", "2",
            "--cv", "2.5", "--upload", "int8", "--jpeg-quality", "75", "--devices", "presets", "--json", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert [p["name"] for p in doc["policies"]] == ["graft", "bound"]
    assert "mine.json" in doc["config"]["profile"] and doc["config"]["slo_ms"] == 800
    assert doc["config"]["replan_s"] == 2
    assert {k: doc["config"][k] for k in ("cv", "upload", "jpeg_quality", "devices")} == {
        "cv": 2.5, "upload": "int8", "jpeg_quality": 75, "devices": "presets"}


@pytest.mark.parametrize("argv, message", [
    (["--trace", "no-such-trace"], "expected a bundled trace"),
])
def test_bad_arguments_name_what_is_wrong(argv, message, capsys):
    assert main([*SMALL, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--profile", "no-such-gpu"], "--profile: expected a JSON profile path, cpu, or a GPU preset"),
    (["--model", "no_such_net"], "--model: unknown model 'no_such_net'"),
    (["--policies", "graft,magic"], "--policies: expected a comma-separated list of"),
    (["--policies", ","], "--policies: expected a comma-separated list of"),
    (["--slo-ms", "-5"], "--slo-ms: expected a positive finite number, got '-5'"),
    (["--slo-ms", "inf"], "--slo-ms: expected a positive finite number, got 'inf'"),
    (["--rate", "0"], "--rate: expected a positive finite number"),
    (["--duration-s", "nan"], "--duration-s: expected a positive finite number"),
    (["--replan-s", "-1"], "--replan-s: expected a positive finite number"),
    (["--clients", "0"], "--clients: expected a whole number of at least 1, got '0'"),
    (["--clients", "2.5"], "--clients: expected a whole number of at least 1"),
    (["--seed", "-1"], "--seed: expected a whole number of at least 0"),
    (["--cv", "0"], "--cv: expected a positive finite number, got '0'"),
    (["--cv", "nan"], "--cv: expected a positive finite number"),
    (["--upload", "bf16"], "argument --upload: invalid choice: 'bf16'"),
    (["--jpeg-quality", "0"], "--jpeg-quality: expected a whole number from 1 to 100, got '0'"),
    (["--jpeg-quality", "101"], "--jpeg-quality: expected a whole number from 1 to 100, got '101'"),
    (["--jpeg-quality", "90.5"], "--jpeg-quality: expected a whole number from 1 to 100"),
    (["--devices", "phones"], "argument --devices: invalid choice: 'phones'"),
    (["--models", "resnet50,resnet50"], "--models/--model: expected distinct comma-separated model names"),
    (["--policies", "graft,graft"], "--policies: expected a comma-separated list of distinct policies"),
    (["--json", "/proc/r.json"], "--json: cannot write '/proc/r.json'"),
    (["--models", "resnet99"], "unknown model 'resnet99'"),
    (["--json", "/no/such/folder/r.json"], "--json: cannot write '/no/such/folder/r.json'"),
    (["--plot", "."], "--plot: cannot write '.'"),
])
def test_flags_are_checked_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*SMALL, *argv])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_the_console_script_is_installed():
    graft = Path(sysconfig.get_path("scripts")) / "graft"
    assert graft.exists(), "no graft console script beside this Python: reinstall with pip install -e ."
    out = subprocess.run([str(graft), "simulate", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--slo-ms" in out and "--trace-format" in out


def test_a_malformed_profile_file_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"models": {"resnet50": {"pieces": [{"from": "x"}]}}, "batches": [1]}')
    assert main([*SMALL, "--profile", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"graft: error: latency profile {path}: models.resnet50.pieces[0]: missing field 'latency_ms'"


def test_several_seeds_add_medians_with_intervals_and_short_runs_are_refused(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([*SMALL, "--seeds", "2", "--policies", "graft,per-fragment", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "over 2 seeds: median [interval" in printed
    doc = json.loads(out.read_text())
    assert [s["seeds"] for s in doc["over_seeds"]] == [2, 2] and doc["config"]["seeds"] == 2
    assert main([*SMALL, "--duration-s", "1", "--slo-ms", "500"]) == 2
    assert "--duration-s 1 with --slo-ms 500: expected a run of at least 10 times the SLO" in capsys.readouterr().err
    assert main([*SMALL, "--replan-s", "0.1"]) == 2
    assert "--replan-s 0.1 with --slo-ms 500: expected a window of at least the SLO" in capsys.readouterr().err


def test_mps_partitions_are_whole_percentages(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([*SMALL, "--mps", "--policies", "graft", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["partitions"].startswith("mps on NVIDIA H200")
    assert all(g["partition"].endswith("%") for g in doc["policies"][0]["plan"]["groups"])


def test_several_models_share_the_gpus(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [*SMALL, "--models", "resnet50,mobilenet_v2", "--policies", "graft,per-fragment", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "graft plan (resnet50): " in printed and "graft plan (mobilenet_v2): " in printed
    doc = json.loads(out.read_text())
    graft = doc["policies"][0]
    assert set(graft["plans"]) == {"resnet50", "mobilenet_v2"} and set(doc["requests"]) == set(graft["plans"])
    shares = [sum(p["share"] for p in plan["partitions"]) for plan in graft["plans"].values()]
    assert graft["share"] == pytest.approx(sum(shares), abs=1e-3)
    assert graft["gpus"] >= 1 and graft["requests"] == sum(r["requests"] for r in doc["requests"].values())


# graft serve: the runtime on this CPU (a mobilenet_v2 profile measured once into a temporary cache)

SERVE = ["serve", "--model", "mobilenet_v2", "--clients", "8", "--duration-s", "10", "--slo-ms", "1000"]


@pytest.fixture(scope="module")
def profile_cache(tmp_path_factory):
    """One CPU profile cache for the serve tests, so mobilenet_v2 is measured once."""
    path = tmp_path_factory.mktemp("profiles")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_FX_CACHE", str(path))
        yield path


def test_serve_replays_the_stream_through_the_runtime_and_writes_json(profile_cache, tmp_path, capsys):
    out = tmp_path / "served.json"
    assert main([*SERVE, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SLO attainment, measured" in printed and "SLO attainment, predicted" in printed
    assert "profile: CPU (" in printed and "graft plan for" in printed
    doc = json.loads(out.read_text())
    assert {"requests", "completed", "rejected", "slo_attainment", "predicted_slo_attainment", "p50_ms",
            "p99_ms"} <= set(doc)
    assert doc["requests"] == doc["completed"] + doc["rejected"] > 0
    assert sum(doc["rejected_by_reason"].values()) == doc["rejected"]
    assert 0 <= doc["slo_attainment"] <= 1 and 0 <= doc["predicted_slo_attainment"] <= 1
    assert doc["config"]["model"] == "mobilenet_v2" and doc["plan"]["groups"]
    assert len(doc["pace"]) == len(doc["plan"]["partitions"]) and all(p["factor"] >= 1 for p in doc["pace"])
    if doc["completed"]:
        assert "batch time over price: partition 0:" in printed


def test_serve_http_answers_the_stock_client_and_stops_on_interrupt(profile_cache):
    import signal
    import socket
    import time

    import numpy as np
    import tritonclient.http as tc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    graft = Path(sysconfig.get_path("scripts")) / "graft"
    server = subprocess.Popen([str(graft), *SERVE, "--http", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(600):
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.5)
        assert client.get_server_metadata()["name"] == "graft_fx"
        metadata = client.get_model_metadata(server_models(port)[0])
        shape = metadata["inputs"][0]["shape"]
        x = tc.InferInput(metadata["inputs"][0]["name"], shape, "FP32")
        x.set_data_from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        result = client.infer(metadata["name"], [x], timeout=2_000_000)
        assert result.as_numpy(metadata["outputs"][0]["name"]).shape == (1, 1000)
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output
    assert "serving mobilenet_v2." in output


def server_models(port):
    """The protocol model names the server lists in its metrics (one per fragment type)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sorted({line.split('fragment="')[1].split('"')[0] for line in text.splitlines()
                   if line.startswith("graft_requests_total{")})


@pytest.mark.parametrize("args, words", [
    (["--models", "resnet50,mobilenet_v2"], "runs one model"),
    (["--profile", "h200"], "expected cpu or a JSON profile"),
])
def test_serve_refuses_what_it_cannot_run(args, words, capsys):
    assert main([*SERVE, *args]) == 2
    assert words in capsys.readouterr().err


# --buckets: padded batching (graft_fx.buckets)

@pytest.mark.parametrize("text, buckets", [("pow2", (1, 2, 4, 8, 16, 32, 64, 128, 256)), ("1,2,4,8", (1, 2, 4, 8)),
                                           (" 3, 16 ", (3, 16))])
def test_buckets_are_pow2_or_ascending_batch_sizes(text, buckets):
    from graft_fx.cli import parser

    for command in (SMALL, SERVE):
        assert parser().parse_args([*command, "--buckets", text]).buckets == buckets
        assert parser().parse_args(command).buckets is None


@pytest.mark.parametrize("command", ["simulate", "serve"])
@pytest.mark.parametrize("text", ["4,2", "0,1", "1,1", "pow3", "1,,2", "", "1.5"])
def test_bad_buckets_are_an_error_naming_the_flag(command, text, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--buckets", text])
    assert exit.value.code == 2
    assert "argument --buckets: expected pow2 (1,2,4,8,16,32,64,128,256) or comma-separated" in capsys.readouterr().err


def test_simulate_pads_batches_to_buckets(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([*SMALL, "--policies", "graft,bound", "--buckets", "pow2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["buckets"] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert [p["name"] for p in doc["policies"]] == ["graft", "bound"] and doc["policies"][0]["share"] > 0
    header = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert header[1].startswith("profile: ") and header[2].startswith("partitions: ")
    assert header[3] == "padding: each fragment's rows up to buckets 1,2,4,8,16,32,64,128,256"


def test_the_serve_header_says_padding_is_on_only_with_buckets():
    from graft_fx.cli import _serve_header
    from graft_fx.serving.partitions import for_device
    from graft_fx.serving.planner import Demand, plan

    profile = profiles.load(profiles.shipped()["h200"], "resnet50")
    partitioning = for_device(profile.device)
    the_plan = plan(profile, [Demand(3, 50.0, 0.2)], buckets=(1, 2, 4, 8))
    padded = _serve_header(profile, partitioning, (1, 2, 4, 8), 17, the_plan).splitlines()
    assert padded[:4] == [f"profile: {profile.label}", f"partitions: {partitioning}",
                          "padding: each fragment's rows up to buckets 1,2,4,8",
                          f"graft plan for 17 requests, {the_plan.total_share:.2f} of the device:"]
    assert not any(line.startswith("padding") for line in _serve_header(profile, partitioning, None, 17, the_plan)
                   .splitlines())


H200 = str(profiles.shipped()["h200"])


@pytest.mark.parametrize("argv", [
    ["simulate", "--clients", "50", "--duration-s", "5", "--policies", "graft", "--buckets", "128"],
    ["serve", "--model", "resnet50", "--profile", H200, "--duration-s", "10", "--buckets", "128"],
], ids=["simulate", "serve"])
def test_a_first_bucket_beyond_the_profiles_batches_is_an_error_not_a_row_of_dashes(argv, capsys):
    """Found by review: simulate printed an all-dash row and exited 0 (the search swallowed the
    planner's misleading "cannot be served within its budget"). Serve says so before calibrating."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bucket 128 (the first) exceeds the profile's largest measured batch 64" in err
    assert "calibrating" not in err
