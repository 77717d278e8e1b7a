"""Realign benchmark: what running k fragments of one model as one realigned graph gains and costs.

For each model and each k, the model is cut at k points spread evenly over its cut points, and
fragment i (the tail after cut i) gets ``rows[i]`` rows, 1 to 8, drawn from a seeded RNG. Its
inputs are the activations at its cut, computed once by its head on random images. Three ways of
running all fragments on their rows are timed:

    separate    each tail on its own rows, one after the other (what a server without
                re-alignment does)
    realigned   ``rm(x_1, ..., x_k)``, the RealignedModule that ``graft_fx.realign`` builds
    ideal       hand-built: each fragment's private head (the part of its tail from its cut to
                the deepest cut), one ``torch.cat`` of all rows at the deepest cut, and one batch
                through the deepest fragment's tail; what a perfect realignment would run

Reported: gain = separate / realigned, overhead = realigned / ideal - 1, the wall time of
``realign()`` itself (with ``verify=False``: its default check runs every fragment eagerly, and
this benchmark checks the outputs on its own) and the share of FLOPs the plan runs batched.
Times are medians over ``--reps`` repetitions after ``--warmup`` runs, under
``torch.inference_mode``; the three modes are interleaved (in a rotating order) within each
repetition so that machine noise hits them alike. Outputs of the realigned and ideal runs are
checked against the separate run once per setting, outside the timed region.

Cuts are spread over the cut points that leave at least ``MIN_WORK_LEFT`` of the model's FLOPs
to the server: cuts past that (the last stage, pooling, the classifier) leave the deepest
fragment almost nothing to share.

    python benchmarks/bench_realign.py                 # the full benchmark (slow on a small CPU)
    python benchmarks/bench_realign.py --quick         # smoke test
    python benchmarks/bench_realign.py --models vit_b_16 --k 2 --reps 1 --markdown
    python benchmarks/bench_realign.py --device cuda --models resnet50 --kernels triton   # with graft's kernels
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
from machine import announce
import torchvision
from tqdm import tqdm

import graft_fx

MODELS = {  # name -> (constructor keyword arguments, input side)
    "resnet50": ({}, 224),
    "vgg16": ({}, 224),
    "mobilenet_v2": ({}, 224),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 299),
    "vit_b_16": ({}, 224),
}
QUICK_MODELS = ["resnet50", "mobilenet_v2"]
MIN_WORK_LEFT = 0.1  # a cut must leave at least this fraction of the model's FLOPs to the server
MAX_ROWS = 8
SEED = 0
MODES = ("separate", "realigned", "ideal")


@dataclass
class Row:
    """One setting's measurements; times in milliseconds unless the name says otherwise."""

    model: str
    k: int
    cuts: list[str]
    rows: list[int]
    separate_ms: float
    realigned_ms: float
    ideal_ms: float
    realign_s: float
    batched_flops_fraction: float
    segments: int

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    @property
    def gain(self) -> float:
        return self.separate_ms / self.realigned_ms

    @property
    def overhead(self) -> float:
        return self.realigned_ms / self.ideal_ms - 1


@dataclass
class Setting:
    """Everything one measurement runs, built outside the timed region."""

    tails: list[fx.GraphModule]
    inputs: list[torch.Tensor]
    private_heads: list[fx.GraphModule | None]  # None where the fragment starts at the deepest cut
    deepest: int


# --- machine -----------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- building a setting -------------------------------------------------------------------------

def build_model(name: str, device: torch.device) -> tuple[torch.nn.Module, int]:
    kwargs, side = MODELS[name]
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    return model.eval().to(device), side


def spread_cuts(cuts: list[graft_fx.CutPoint], k: int) -> list[graft_fx.CutPoint]:
    """k cut points evenly spread, by index, over those that leave the server work to do."""
    eligible = [c for c in cuts if c.flops_before <= 1 - MIN_WORK_LEFT]
    last = len(eligible) - 1
    return [eligible[round(i * last / (k - 1))] if k > 1 else eligible[0] for i in range(k)]


def draw_rows(k: int, fixed: int | None) -> list[int]:
    """Rows per fragment: ``fixed`` for all, or 1..MAX_ROWS from an RNG seeded by k alone, so
    every model sees the same rows for a given k."""
    if fixed is not None:
        return [fixed] * k
    rng = random.Random(SEED * 1000 + k)
    return [rng.randint(1, MAX_ROWS) for _ in range(k)]


def build_setting(model: torch.nn.Module, side: int, cuts: list[graft_fx.CutPoint], rows: list[int],
                  device: torch.device) -> Setting:
    example = torch.randn(1, 3, side, side, device=device)
    deepest = max(range(len(cuts)), key=lambda i: (cuts[i].flops_before, i))
    tails, inputs, private_heads = [], [], []
    for cut, n in zip(cuts, rows):
        head, tail = graft_fx.split(model, cut, example)
        tails.append(tail)
        inputs.append(head(torch.randn(n, 3, side, side, device=device)))
        if cut.name == cuts[deepest].name:
            private_heads.append(None)
        else:
            private_head, _ = graft_fx.split(tail, cuts[deepest].name, head(example))
            private_heads.append(private_head)
    return Setting(tails, inputs, private_heads, deepest)


# --- the three modes ----------------------------------------------------------------------------

def separate_fn(s: Setting) -> Callable[[], list[torch.Tensor]]:
    return lambda: [tail(x) for tail, x in zip(s.tails, s.inputs)]


def realigned_fn(s: Setting, rm: graft_fx.RealignedModule) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: rm(*s.inputs)


def ideal_fn(s: Setting) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        at_deepest = [x if head is None else head(x) for head, x in zip(s.private_heads, s.inputs)]
        return s.tails[s.deepest](torch.cat(at_deepest))
    return run


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off while checking: with it, cuDNN picks per-batch-size algorithms whose rounding
    differs by up to about 1e-2 relative, which says nothing about the rewrite."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check(separate: list[torch.Tensor], realigned: tuple[torch.Tensor, ...], ideal: torch.Tensor) -> None:
    """Realigned and ideal outputs must match the separate ones (tolerance scaled to magnitude)."""
    reference = torch.cat(separate)
    atol = 1e-4 * reference.abs().max().item() + 1e-5
    for i, (want, got) in enumerate(zip(separate, realigned)):
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-3, msg=lambda m: f"realigned fragment {i}: {m}")
    torch.testing.assert_close(ideal, reference, atol=atol, rtol=1e-3, msg=lambda m: f"ideal pipeline: {m}")


def time_modes(fns: dict[str, Callable[[], Any]], reps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds per mode; each repetition runs every mode once, in a rotating order."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(name: str, k: int, args: argparse.Namespace, device: torch.device) -> Row:
    model, side = build_model(name, device)
    cuts = spread_cuts(graft_fx.cut_points(model, torch.randn(1, 3, side, side, device=device)), k)
    rows = draw_rows(k, args.rows)
    setting = build_setting(model, side, cuts, rows, device)
    start = time.perf_counter()
    rm = graft_fx.realign(setting.tails, verify=False, kernels=args.kernels)  # checked below, outside the timing
    realign_s = time.perf_counter() - start
    fns = {"separate": separate_fn(setting), "realigned": realigned_fn(setting, rm), "ideal": ideal_fn(setting)}
    with exact_fp32():
        check(*(fns[mode]() for mode in MODES))
    ms = time_modes(fns, args.reps, args.warmup, device)
    return Row(name, k, [c.name for c in cuts], rows, ms["separate"], ms["realigned"], ms["ideal"],
               realign_s, rm.plan.batched_flops_fraction, len(rm.plan.segments))


# --- reporting ----------------------------------------------------------------------------------

COLUMNS = ("model", "k", "rows", "separate ms", "realigned ms", "ideal ms", "gain", "overhead",
           "realign() s", "batched FLOPs")


def cells(r: Row) -> tuple[str, ...]:
    return (r.model, str(r.k), str(r.total_rows), f"{r.separate_ms:.1f}", f"{r.realigned_ms:.1f}",
            f"{r.ideal_ms:.1f}", f"{r.gain:.2f}x", f"{100 * r.overhead:+.1f}%", f"{r.realign_s:.2f}",
            f"{100 * r.batched_flops_fraction:.1f}%")


def text_table(rows: list[Row]) -> str:
    body = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(body[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in body[1:]])


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells(r)) + " |" for r in rows])


def progress_line(r: Row) -> str:
    return (f"{r.model} k={r.k} rows={r.rows} cuts={r.cuts}: separate {r.separate_ms:.1f} ms, "
            f"realigned {r.realigned_ms:.1f} ms, ideal {r.ideal_ms:.1f} ms, gain {r.gain:.2f}x, "
            f"overhead {100 * r.overhead:+.1f}%, realign() {r.realign_s:.2f} s, "
            f"{r.segments} segments, {100 * r.batched_flops_fraction:.1f}% FLOPs batched")


# --- main ---------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)} (default: all)")
    p.add_argument("--k", help="comma-separated fragment counts (default: 2,4,8)")
    p.add_argument("--rows", type=int, help=f"rows for every fragment (default: 1..{MAX_ROWS}, seeded)")
    p.add_argument("--reps", type=int, help="timed repetitions per mode; the median is reported (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each mode first (default: 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--kernels", default="auto", choices=("auto", "triton", "torch"),
                   help="where realigned graphs call graft's kernel ops (realign's kernels=; default: auto)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {' and '.join(QUICK_MODELS)}, k=2,4, 2 reps (explicit flags still win)")
    p.add_argument("--json", metavar="PATH", help="write the machine and every row to PATH")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = p.parse_args()
    args.models = args.models.split(",") if args.models else QUICK_MODELS if args.quick else list(MODELS)
    args.k = [int(k) for k in args.k.split(",")] if args.k else [2, 4] if args.quick else [2, 4, 8]
    args.reps = args.reps or (2 if args.quick else 5)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    machine = announce(device, args.threads)
    print(f"kernels {args.kernels}, reps {args.reps} (median), warmup {args.warmup}, rows per fragment "
          f"{args.rows or f'1..{MAX_ROWS} (seeded)'}")
    settings = [(name, k) for name in args.models for k in args.k]
    results: list[Row] = []
    started = time.perf_counter()
    with torch.inference_mode():
        for name, k in tqdm(settings, unit="setting"):
            results.append(measure(name, k, args, device))
            tqdm.write(progress_line(results[-1]))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\n{len(settings)} settings in {time.perf_counter() - started:.0f} s\n")
    print(text_table(results))
    if args.markdown:
        print("\n" + markdown_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args),
                       "rows": [asdict(r) | {"gain": r.gain, "overhead": r.overhead} for r in results]}, f, indent=2)


if __name__ == "__main__":
    main()
