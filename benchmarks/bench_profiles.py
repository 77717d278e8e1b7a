"""How well modelled latency profiles match measured ones: the roofline's calibration check.

(a) H200: the modelled H200 preset (`graft_fx.serving.roofline`) against the shipped measured
    profile (graft_fx/serving/data/profiles/h200.json), for the five models it holds: relative
    error of fragment latencies (fragment f = pieces f to the end) over every share and batch
    size, and the error of the *shape* (t(b) / t(1), per fragment and share). The preset's fitted
    parameters came from this very data, so the preset rows are in-sample; the "held out" rows
    fit all five models but one and check that one (leave one model out).
(b) CPU: resnet50 and mobilenet_v2 measured here with `graft_fx.serving.measure` (one thread,
    small batches), the CPU form fitted on one model (`roofline.CPU_FREE`) and checked on the other.
(c) Shape check against published figures: the A100 preset, with its peaks swapped for fp16
    tensor cores and its bytes halved, against AITemplate's eager PyTorch fp16 rows
    (../shared/reference/gpu-latency.md), whole model, t(b) / t(1).

Prints markdown tables and writes JSON (with the machine's description) under benchmarks/results/.

    python benchmarks/bench_profiles.py            # about a minute on a 2-core CPU
    python benchmarks/bench_profiles.py --quick    # (a) without the held-out fits, a smaller (b)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from graft_fx.serving import profiles, zoo
from graft_fx.serving import roofline as R
from graft_fx.serving.measure import device_name, measure
from graft_fx.serving.pieces import select

CPU_MODELS = ("resnet50", "mobilenet_v2")
PUBLISHED_A100_FP16 = {  # AITemplate examples, eager PyTorch 1.12, A100-40GB, fp16, ms per batch
    "batches": [1, 2, 4, 8, 16, 32, 64, 128],
    "resnet50": [7.68, 7.16, 7.17, 7.02, 7.01, 7.53, 13.98, 26.57],
    "vit_b_16": [4.95, 5.26, 5.51, 5.56, 8.59, 15.95, 31.48, 59.86],
}
RESULTS = Path(__file__).parent / "results"


def shape_errors(measured: np.ndarray, modelled: np.ndarray) -> np.ndarray:
    """|modelled t(b)/t(1) over measured t(b)/t(1) - 1| for b > 1, per fragment and share."""
    rm = measured[..., 1:] / measured[..., :1]
    rp = modelled[..., 1:] / modelled[..., :1]
    return np.abs(rp / rm - 1)


def stats(e: np.ndarray) -> dict[str, float]:
    e = np.abs(np.asarray(e)).ravel()
    return {"median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "worst": float(e.max())}


def check(profile: profiles.Profile, costs, acc: R.Accelerator) -> dict[str, Any]:
    measured = R.fragments(profile.latency_s)
    modelled = R.fragments(R.latency_table(costs, acc, profile.shares, profile.batches))
    return {"latency": stats(modelled / measured - 1), "shape": stats(shape_errors(measured, modelled))}


def part_a(quick: bool) -> dict[str, Any]:
    path = profiles.shipped()["h200"]
    data, names_match = {}, {}
    for name in zoo.BENCHMARK_MODELS:
        model, example = zoo.build(name)
        measured = profiles.load(path, name)
        ours = select(model, example).pieces
        names_match[name] = [(p.start, p.end) for p in ours] == [(p.start, p.end) for p in measured.pieces]
        data[name] = (measured, R.costs_for(measured, model, example))
    preset = R.preset("h200")
    started = time.time()
    fitted = R.fit(preset, list(data.values()))
    out: dict[str, Any] = {"profile": str(path.name), "device": data["resnet50"][0].device,
                           "preset": dataclasses.asdict(preset), "fitted_all": dataclasses.asdict(fitted),
                           "fit_s": time.time() - started, "models": {}}
    every = {"preset": [], "held_out": []}
    for name, (measured, costs) in data.items():
        row = {"cuts_match_shipped": names_match[name], "preset": check(measured, costs, preset)}
        every["preset"].append(R.errors(measured, costs, preset).ravel())
        if not quick:
            held = R.fit(preset, [v for k, v in data.items() if k != name])
            row["held_out"] = check(measured, costs, held)
            row["held_out_params"] = {f: getattr(held, f) for f in R.FREE}
            every["held_out"].append(R.errors(measured, costs, held).ravel())
        out["models"][name] = row
    out["all"] = {k: stats(np.concatenate(v)) for k, v in every.items() if v}
    return out


def part_b(quick: bool, threads: int, reps: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    batches = (1, 2, 4) if quick else (1, 2, 4, 8)
    data = {}
    for name in CPU_MODELS:
        model, example = zoo.build(name)
        started = time.time()
        measured = measure(model, example, name, pieces=10, batches=batches, reps=reps, warmup=1)
        data[name] = (measured, R.costs_for(measured, model, example))
        print(f"  measured {name} on the CPU in {time.time() - started:.1f} s", flush=True)
    form = R.preset("cpu")
    out: dict[str, Any] = {"device": data[CPU_MODELS[0]][0].device, "threads": threads, "batches": list(batches),
                           "reps": reps, "form": dataclasses.asdict(form), "fits": {},
                           "measured_ms": {n: (R.fragments(p.latency_s)[:, 0, :] * 1e3).tolist()
                                           for n, (p, _) in data.items()}}
    for train in CPU_MODELS:
        fitted = R.fit(form, [data[train]], free=R.CPU_FREE)
        out["fits"][train] = {"params": {f: getattr(fitted, f) for f in R.CPU_FREE},
                              "errors": {n: check(*data[n], fitted) for n in CPU_MODELS}}
    out["unfitted"] = {n: check(*data[n], form) for n in CPU_MODELS}
    return out


def part_c() -> dict[str, Any]:
    a100 = R.preset("a100")
    fp16 = dataclasses.replace(a100, conv_flops=312e12, matmul_flops=312e12, bandwidth=2 * a100.bandwidth)
    batches = PUBLISHED_A100_FP16["batches"]
    out = {}
    for name in ("resnet50", "vit_b_16"):
        model, example = zoo.build(name)
        sel = select(model, example)
        t = R.fragments(R.latency_table(sel.costs(), fp16, [1.0], batches))[0, 0] * 1e3
        pub = np.array(PUBLISHED_A100_FP16[name])
        out[name] = {"published_ms": pub.tolist(), "modelled_ms": t.tolist(),
                     "published_ratio": (pub / pub[0]).tolist(), "modelled_ratio": (t / t[0]).tolist()}
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(a: dict[str, Any], b: dict[str, Any] | None, c: dict[str, Any]) -> str:
    lines = ["### (a) Modelled H200 preset vs the shipped measured H200 profile",
             "",
             "Relative error of fragment latencies over 5 shares x 7 batch sizes x 11 fragments per model;",
             "shape: error of t(b) / t(1). Preset: in-sample (fitted on these data). Held out: fitted",
             "on the other four models (vit_b_16 is the only one whose time goes into matrix products,",
             "so without it the matrix-product efficiency is unconstrained).",
             "",
             "| model | cuts match | preset median | preset p90 | preset worst | shape median "
             "| held-out median | held-out worst |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    def cells(e: dict[str, Any] | None, keys: tuple[str, ...]) -> str:
        return " | ".join(pct(e[k]) if e else "-" for k in keys)

    for name, row in a["models"].items():
        held = row.get("held_out")
        lines.append(f"| {name} | {'yes' if row['cuts_match_shipped'] else 'NO'} | "
                     f"{cells(row['preset']['latency'], ('median', 'p90', 'worst'))} | "
                     f"{pct(row['preset']['shape']['median'])} | "
                     f"{cells(held and held['latency'], ('median', 'worst'))} |")
    al = a["all"]
    lines.append(f"| all | | {cells(al['preset'], ('median', 'p90', 'worst'))} | | "
                 f"{cells(al.get('held_out'), ('median', 'worst'))} |")
    lines += ["", f"Preset: {R.describe(R.preset('h200'))}", ""]
    if b:
        lines += ["### (b) CPU form fitted on one model, checked on the other", "",
                  f"Machine: {b['device']}; {b['threads']} thread(s), batches {b['batches']}, "
                  f"median of {b['reps']}.",
                  f"Free: {', '.join(R.CPU_FREE)}.", "",
                  "| fitted on | checked on | median | p90 | worst | shape median | fitted parameters |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for train, fit in b["fits"].items():
            params = ", ".join(f"{k} {v * 1e6:.1f} us" if k.endswith("_s") else f"{k} {v:.2f}"
                               for k, v in fit["params"].items())
            for test, e in fit["errors"].items():
                label = f"{test} (in-sample)" if test == train else test
                lines.append(f"| {train} | {label} | {cells(e['latency'], ('median', 'p90', 'worst'))} | "
                             f"{pct(e['shape']['median'])} | {params} |")
        for test, e in b["unfitted"].items():
            lines.append(f"| (unfitted form) | {test} | {cells(e['latency'], ('median', 'p90', 'worst'))} | "
                         f"{pct(e['shape']['median'])} | |")
        lines.append("")
    lines += ["### (c) Shape against published eager fp16 figures (A100 preset, fp16 peaks, half the bytes)", "",
              "| model | | " + " | ".join(str(x) for x in PUBLISHED_A100_FP16["batches"]) + " |",
              "|---|---|" + "---:|" * len(PUBLISHED_A100_FP16["batches"])]
    for name, row in c.items():
        for label, key in (("published ms", "published_ms"), ("modelled ms", "modelled_ms"),
                           ("published t(b)/t(1)", "published_ratio"), ("modelled t(b)/t(1)", "modelled_ratio")):
            lines.append(f"| {name} | {label} | " + " | ".join(f"{x:.2f}" for x in row[key]) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"cpu": device_name("cpu"), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="no held-out fits in (a), batches 1-4 in (b)")
    p.add_argument("--no-cpu", action="store_true", help="skip (b), the CPU measurements")
    p.add_argument("--threads", type=int, default=1, help="torch threads for (b) (default: 1)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per cell in (b) (default: 3)")
    p.add_argument("--json", default=str(RESULTS / "profiles_calibration.json"))
    args = p.parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    a = part_a(args.quick)
    b = None if args.no_cpu else part_b(args.quick, args.threads, args.reps)
    c = part_c()
    table = markdown(a, b, c)
    print(table)
    result = {"machine": machine(), "quick": args.quick, "seconds": time.time() - started,
              "h200": a, "cpu": b, "a100_published_shape": c, "markdown": table}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {args.json} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
