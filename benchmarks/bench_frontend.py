"""The front half's own cost: capture, cut points, split, realign and its built-in check.

Issue 7 set targets for one model on this CPU: ``split`` of one model at 8 cuts within 10 s in
all (the capture behind ``cut_points`` included), ``realign()`` of the 8 tails within 3 s, and its
verify pass within as much again. This times exactly those steps of the public API, each once on
a fresh model (the first capture of a module is the expensive step, so repetitions would time the
cache), ``--reps`` times, and prints the median and the slowest.

    python benchmarks/bench_frontend.py                       # resnet50, 8 cuts, 3 repetitions
    python benchmarks/bench_frontend.py --model vit_b_16 --cuts 4 --threads 1 --markdown
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torchvision
from machine import describe

import graft_fx
from graft_fx.verify import verify

SIDES = {"inception_v3": 299}


def steps(model_name: str, cuts: int) -> dict[str, float]:
    """Seconds of each step, on a freshly built model (nothing cached)."""
    kwargs = {"aux_logits": False, "init_weights": True} if model_name == "inception_v3" else {}
    model = torchvision.models.get_model(model_name, weights=None, **kwargs).eval()
    side = SIDES.get(model_name, 224)
    x = torch.randn(1, 3, side, side)
    times: dict[str, float] = {}
    start = time.perf_counter()
    points = graft_fx.cut_points(model, x)
    times["cut_points (the capture)"] = time.perf_counter() - start
    chosen = [points[round(i * (len(points) - 1) / (cuts + 1))] for i in range(1, cuts + 1)]
    start = time.perf_counter()
    tails = [graft_fx.split(model, c, x)[1] for c in chosen]
    times[f"split at {cuts} cuts"] = time.perf_counter() - start
    start = time.perf_counter()
    rm = graft_fx.realign(tails, verify=False)
    times[f"realign of {cuts} tails, verify=False"] = time.perf_counter() - start
    start = time.perf_counter()
    verify(rm)
    times["verify pass"] = time.perf_counter() - start
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--cuts", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe()
    print(f"{machine['cpu']} | threads: {machine['torch_threads']} | torch {machine['torch']} | "
          f"{args.model}, {args.cuts} cuts, {args.reps} repetitions")
    runs = []
    for _ in range(args.reps):
        runs.append(steps(args.model, args.cuts))
        gc.collect()
    rows = [(name, statistics.median(r[name] for r in runs), max(r[name] for r in runs)) for name in runs[0]]
    if args.markdown:
        print("\n| step | median s | slowest s |\n|---|---:|---:|")
        print("\n".join(f"| {n} | {m:.2f} | {s:.2f} |" for n, m, s in rows))
    else:
        print("\n".join(f"{n:40s} {m:8.2f} s  (slowest {s:.2f} s)" for n, m, s in rows))


if __name__ == "__main__":
    main()
