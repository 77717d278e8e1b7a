"""torch.compile and the graft backend: k fragments of one model, compiled as they run separately,
with Inductor's own horizontal batch fusion, and realigned by ``backend="graft"``.

For each model and each k, the model is cut at k points spread over its cut points and fragment
i (the tail after cut i) gets ``rows[i]`` rows, as in bench_realign.py (same cuts, same seeded
rows: k=2: [1, 2]; k=4: [4, 5, 2, 7]; ``--rows N`` gives every fragment N). One function serves
them all, ``serve(x_1, ..., x_k) = (tail_1(x_1), ..., tail_k(x_k))``, and is run, on the same
inputs, as:

    eager                each tail on its own rows, one after the other
    realigned            ``graft_fx.realign(tails, verify=False)``, the RealignedModule, eager
    inductor             ``torch.compile(serve)``: the k tails compiled by Inductor as one graph,
                         still run separately
    inductor+fusion      the same, compiled with Inductor's horizontal batch fusions on
                         (`FUSIONS`, each with ``min_fuse_set_size=2`` rather than the default 5,
                         so that two fragments are enough)
    graft                ``torch.compile(serve, backend="graft", options={"compiler": "inductor",
                         "verify": False})``: the backend realigns the tails it finds in the
                         captured graph and compiles the result with Inductor
    inductor-cudagraphs  (``--device cuda`` only) ``torch.compile(serve, mode="reduce-overhead")``
    graft-cudagraphs     (``--device cuda`` only) the realigned module with each row group padded
                         to a power of two, ``torch.compile(realign(tails, verify=False,
                         buckets=POWERS_OF_TWO), mode="reduce-overhead")``; skipped, with a note,
                         where `graft_fx.realign` takes no ``buckets``

Inductor's batch fusions (torch/_inductor/fx_passes/group_batch_fusion.py) stack k equal-shaped
ops into one batched op: ``batch_linear_post_grad`` turns k ``mm``/``addmm`` of equal 2-D shapes
into one ``bmm``; ``batch_aten_{relu,add,mul,...}`` stack k equal-shaped pointwise ops. They run
on any device; ``group_linear`` (fbgemm's grouped GEMM, CUDA) is left out. Two limits decide
where they can fire here. The tails are ATen graphs (graft_fx captures with torch.export), so the
pre-grad fusions, which match torch-level calls (``F.linear``, ``torch.relu``, ``F.layer_norm``),
find nothing; only the post-grad ones, on the ATen graph after AOT autograd, can match. And every
fusion keys on the full input shape, rows included, so it joins two fragments' copies of a layer
only when they have the same number of rows: with the seeded rows (all different) nothing fuses,
with ``--rows N`` the equal-shaped linears and pointwise ops do; convolutions have no batch fusion
at all. ``torch._dynamo.utils.counters["inductor"]`` counts what fired, reported per setting.

``--freezing`` compiles every compiled mode with ``torch._inductor.config.freezing``: weights
become constants, folded and prepacked once. Without it, on this project's 2-core CPU, Inductor
made resnet18 slower than eager, and much less so with its layout optimization (channels-last
convolutions) turned off, which points at the layout conversions it inserts into every call.

Every mode's outputs are checked against eager before it is timed (bench_realign's tolerance).
TF32 is off throughout, on a GPU too: Dynamo guards on it, so a graph compiled for the check
would recompile for timing with it on. Reported per compiled mode: the wall seconds of its first
call (Dynamo capture, for graft also the realignment, then Inductor's compilation, under a fresh
Inductor cache so the C++ or Triton compile is cold: a warm cache makes later runs cheaper), then
the median milliseconds per call over ``--reps`` repetitions after ``--warmup`` runs, under
``torch.inference_mode``. One throwaway compilation first pays Inductor's start-up in the
process, which would otherwise land on the first mode measured. ``torch._dynamo.reset()`` runs
before each compiled mode and drops the code every earlier mode compiled, so each compiled mode
is timed right after its first call, in its own block; eager and realigned are timed together
(interleaved) before them. On a shared CPU, compare blocks with care: inductor and
inductor+fusion run the same graph when no fusion fires, and their gap is the noise.

    python benchmarks/bench_compile.py                          # CPU: mlp and resnet18, k = 2, 4
    python benchmarks/bench_compile.py --models mlp --k 2 --rows 4 --reps 5
    python benchmarks/bench_compile.py --device cuda --json compile_h200.json --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torchvision
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_realign  # noqa: E402
from bench_realign import build_setting, check, draw_rows, exact_fp32, spread_cuts, time_modes  # noqa: E402
from machine import announce  # noqa: E402

import graft_fx  # noqa: E402
import graft_fx.buckets  # noqa: E402

FUSIONS = {
    "pre_grad_fusion_options": ("batch_linear", "batch_linear_lhs", "batch_layernorm", "batch_relu",
                                "batch_tanh", "batch_sigmoid"),
    "post_grad_fusion_options": ("batch_linear_post_grad", "batch_aten_relu", "batch_aten_add",
                                 "batch_aten_sub", "batch_aten_mul", "batch_aten_div", "batch_aten_tanh",
                                 "batch_aten_sigmoid"),
}
"""Inductor's horizontal batch fusions turned on for ``inductor+fusion``, by config option."""
MIN_FUSE_SET_SIZE = 2
COMPILED_MODES = ("inductor", "inductor+fusion", "graft")
CUDA_MODES = ("inductor-cudagraphs", "graft-cudagraphs")
DEFAULT_MODELS = {"cpu": ["mlp", "resnet18"], "cuda": ["resnet50", "vit_b_16"]}
DEFAULT_K = {"cpu": [2, 4], "cuda": [2, 4, 8]}
DEFAULT_REPS = 20


# --- models -------------------------------------------------------------------------------------

def mlp(side: int) -> nn.Module:
    """A wide MLP on ``side`` x ``side`` RGB images: flatten, then 6 x (Linear to 1024, ReLU)."""
    widths = [3 * side * side] + [1024] * 6
    return nn.Sequential(nn.Flatten(), *(m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())))


def resnet18(side: int) -> nn.Module:
    """torchvision's resnet18 (1000 classes, random weights)."""
    return torchvision.models.resnet18(weights=None)


MODELS: dict[str, tuple[Callable[[int], nn.Module], int]] = {  # name -> (constructor, input side)
    "mlp": (mlp, 16),
    "resnet18": (resnet18, 64),
}
"""Models of this benchmark; bench_realign's (resnet50, vit_b_16, ...) are accepted too."""


def build_model(name: str, device: torch.device) -> tuple[nn.Module, int]:
    """The model in eval mode on ``device`` and its input side; seeded as bench_realign seeds."""
    if name in bench_realign.MODELS:
        return bench_realign.build_model(name, device)
    make, side = MODELS[name]
    torch.manual_seed(bench_realign.SEED)
    return make(side).eval().to(device), side


# --- the modes ----------------------------------------------------------------------------------

@dataclass
class Compiled:
    """A compiled mode after its first call: ``compile_s`` wall seconds for that call, the
    outputs it gave, the Inductor batch fusions that fired (name -> count) and how many graphs
    the graft backend realigned (None for modes that do not go through it)."""

    compile_s: float
    outputs: Any
    fusions: dict[str, int]
    realigned_graphs: int | None


def serving_function(tails: list[torch.nn.Module]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``serve(x_1, ..., x_k) = (tail_1(x_1), ..., tail_k(x_k))``: the function compiled."""
    def serve(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tail(x) for tail, x in zip(tails, xs))
    return serve


def fusion_config() -> dict[str, dict[str, dict[str, int]]]:
    """``torch._inductor.config`` options that turn every fusion of `FUSIONS` on."""
    return {option: {name: {"min_fuse_set_size": MIN_FUSE_SET_SIZE} for name in names}
            for option, names in FUSIONS.items()}


def buckets_supported() -> bool:
    """Whether `graft_fx.realign` takes ``buckets`` (padded row groups for static shapes)."""
    return "buckets" in inspect.signature(graft_fx.realign).parameters


def compiled_fn(mode: str, tails: list[torch.nn.Module]) -> Callable[..., Any]:
    """The compiled callable of ``mode`` (module docstring), taking the k inputs."""
    serve = serving_function(tails)
    if mode in ("inductor", "inductor+fusion"):
        return torch.compile(serve, backend="inductor")
    if mode == "graft":
        return torch.compile(serve, backend="graft", options={"compiler": "inductor", "verify": False})
    if mode == "inductor-cudagraphs":
        return torch.compile(serve, mode="reduce-overhead")
    if mode == "graft-cudagraphs":
        padded = graft_fx.realign(tails, verify=False, buckets=graft_fx.buckets.POWERS_OF_TWO)
        return torch.compile(padded, mode="reduce-overhead")
    raise ValueError(f"unknown compiled mode {mode!r}")


@contextlib.contextmanager
def compiling(mode: str, freezing: bool) -> Iterator[None]:
    """Around a mode's first call: Dynamo reset, counters cleared, a fresh (cold) Inductor cache,
    the batch fusions on for ``inductor+fusion``, and Inductor's ``freezing`` as asked."""
    torch._dynamo.reset()
    counters.clear()
    config = {"freezing": freezing} | (fusion_config() if mode == "inductor+fusion" else {})
    with fresh_cache(), torch._inductor.config.patch(config):
        yield


def first_call(mode: str, fn: Callable[..., Any], inputs: list[torch.Tensor], device: torch.device,
               freezing: bool) -> Compiled:
    """Run ``fn`` once on ``inputs`` inside `compiling` and time it (seconds)."""
    with compiling(mode, freezing):
        bench_realign.sync(device)
        start = time.perf_counter()
        outputs = fn(*inputs)
        bench_realign.sync(device)
        compile_s = time.perf_counter() - start
    fusions = {name: n for name, n in counters["inductor"].items() if name in FUSIONS["pre_grad_fusion_options"]
               or name in FUSIONS["post_grad_fusion_options"]}
    realigned = counters["graft"]["realign"] if mode == "graft" else None
    return Compiled(compile_s, outputs, fusions, realigned)


def warm_up_inductor(device: torch.device) -> None:
    """Compile and run a one-op function once, so that Inductor's one-off start-up in this process
    (imports, the compiler toolchain probe, the compile workers) is not charged to the first mode
    measured."""
    with compiling("inductor", freezing=False):
        torch.compile(torch.relu, backend="inductor")(torch.randn(4, device=device))


# --- measuring ----------------------------------------------------------------------------------

@dataclass
class Row:
    """One setting: median ms per call per mode, and per compiled mode its first call's seconds,
    the Inductor fusions that fired, and (graft) the graphs the backend realigned."""

    model: str
    k: int
    cuts: list[str]
    rows: list[int]
    ms: dict[str, float]
    compile_s: dict[str, float] = field(default_factory=dict)
    fusions: dict[str, dict[str, int]] = field(default_factory=dict)
    realigned_graphs: int | None = None
    batched_flops_fraction: float = 0.0

    def ratio(self, a: str, b: str) -> float | None:
        """ms of mode ``a`` over ms of mode ``b`` (below 1: ``a`` is faster), None if either is missing."""
        return self.ms[a] / self.ms[b] if a in self.ms and b in self.ms else None


def compare(expected: list[torch.Tensor], got: Any, mode: str) -> None:
    """``got`` (k outputs) must equal ``expected`` within bench_realign's tolerance; the error
    names the mode."""
    try:
        check(expected, tuple(got), torch.cat(expected))  # no ideal pipeline here: the reference stands in
    except AssertionError as e:
        raise AssertionError(f"{mode}: outputs differ from eager: {e}") from None


def measure(name: str, k: int, args: argparse.Namespace, device: torch.device) -> Row:
    """One setting, every mode. The model, its fragments and the realigned module are built
    under ``no_grad`` (weights made under ``inference_mode`` would be inference tensors, which
    carry no version counter for RealignedModule to watch), then run under ``inference_mode``."""
    with torch.no_grad():
        model, side = build_model(name, device)
        cuts = spread_cuts(graft_fx.cut_points(model, torch.randn(1, 3, side, side, device=device)), k)
        rows = draw_rows(k, args.rows)
        setting = build_setting(model, side, cuts, rows, device)
        tails, inputs = setting.tails, setting.inputs
        rm = graft_fx.realign(tails, verify=False)
    with torch.inference_mode():
        return run_modes(Row(name, k, [c.name for c in cuts], rows, {},
                             batched_flops_fraction=rm.plan.batched_flops_fraction), tails, inputs, rm, args, device)


def run_modes(row: Row, tails: list[torch.nn.Module], inputs: list[torch.Tensor], rm: graft_fx.RealignedModule,
              args: argparse.Namespace, device: torch.device) -> Row:
    """Check and time every mode on ``inputs``, filling ``row``."""
    expected = [tail(x) for tail, x in zip(tails, inputs)]
    compare(expected, rm(*inputs), "realigned")
    row.ms.update(time_modes({"eager": lambda: [tail(x) for tail, x in zip(tails, inputs)],
                              "realigned": lambda: rm(*inputs)}, args.reps, args.warmup, device))
    for mode in args.modes:
        fn = compiled_fn(mode, tails)
        done = first_call(mode, fn, inputs, device, args.freezing)
        compare(expected, done.outputs, mode)
        row.ms.update(time_modes({mode: lambda: fn(*inputs)}, args.reps, args.warmup, device))
        row.compile_s[mode] = done.compile_s
        if mode == "inductor+fusion":
            row.fusions[mode] = done.fusions
        if done.realigned_graphs is not None:
            row.realigned_graphs = done.realigned_graphs
    torch._dynamo.reset()
    return row


# --- reporting ----------------------------------------------------------------------------------

def timing_columns(modes: list[str]) -> tuple[str, ...]:
    return ("model", "k", "rows", "eager", "realigned", *modes, "graft/inductor", "graft/inductor+fusion")


def timing_cells(r: Row, modes: list[str]) -> tuple[str, ...]:
    ratios = (r.ratio("graft", "inductor"), r.ratio("graft", "inductor+fusion"))
    times = (f"{r.ms[m]:.2f}" if m in r.ms else "-" for m in ("eager", "realigned", *modes))
    return (r.model, str(r.k), str(sum(r.rows)), *times, *(f"{x:.2f}" if x is not None else "-" for x in ratios))


def compile_columns(modes: list[str]) -> tuple[str, ...]:
    return ("model", "k", *(f"{m} s" for m in modes), "fusions fired", "graphs realigned by graft")


def compile_cells(r: Row, modes: list[str]) -> tuple[str, ...]:
    fired = r.fusions.get("inductor+fusion", {})
    return (r.model, str(r.k), *(f"{r.compile_s[m]:.1f}" if m in r.compile_s else "-" for m in modes),
            ", ".join(f"{n} x{c}" for n, c in sorted(fired.items())) or "none",
            "-" if r.realigned_graphs is None else str(r.realigned_graphs))


def text_table(columns: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    body = [columns] + lines
    widths = [max(len(line[i]) for line in body) for i in range(len(columns))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(columns), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines])


def markdown_table(columns: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    head = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    return "\n".join(head + ["| " + " | ".join(line) + " |" for line in lines])


def tables(results: list[Row], modes: list[str],
           render: Callable[[tuple[str, ...], list[tuple[str, ...]]], str]) -> str:
    """The median ms per call per mode with the graft ratios, then each compiled mode's first call."""
    timing = render(timing_columns(modes), [timing_cells(r, modes) for r in results])
    compiles = render(compile_columns(modes), [compile_cells(r, modes) for r in results])
    return f"median ms per call\n\n{timing}\n\nfirst call (compile) s\n\n{compiles}"


def progress_line(r: Row) -> str:
    times = ", ".join(f"{m} {ms:.2f} ms" for m, ms in r.ms.items())
    compiles = ", ".join(f"{m} {s:.1f} s" for m, s in r.compile_s.items())
    return f"{r.model} k={r.k} rows={r.rows} cuts={r.cuts}: {times}; first calls: {compiles}; fusions {r.fusions}"


# --- main ---------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = [*MODELS, *bench_realign.MODELS]
    p.add_argument("--models", help=f"comma-separated, from {', '.join(known)} "
                                    "(default: mlp,resnet18 on cpu, resnet50,vit_b_16 on cuda)")
    p.add_argument("--k", help="comma-separated fragment counts (default: 2,4 on cpu, 2,4,8 on cuda)")
    p.add_argument("--rows", type=int, help=f"rows for every fragment (default: 1..{bench_realign.MAX_ROWS}, seeded)")
    p.add_argument("--reps", type=int, default=DEFAULT_REPS,
                   help=f"timed repetitions per mode; the median is reported (default: {DEFAULT_REPS})")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each mode first (default: 2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--freezing", action="store_true",
                   help="compile with torch._inductor.config.freezing (weights as constants, prepacked)")
    p.add_argument("--json", metavar="PATH", help="write the machine, the arguments and every row to PATH")
    p.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    args = p.parse_args()
    args.models = args.models.split(",") if args.models else DEFAULT_MODELS[args.device]
    args.k = [int(k) for k in args.k.split(",")] if args.k else DEFAULT_K[args.device]
    unknown = sorted(set(args.models) - set(known))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {known}")
    args.modes = list(COMPILED_MODES)
    if args.device == "cuda":
        args.modes.append("inductor-cudagraphs")
        if buckets_supported():
            args.modes.append("graft-cudagraphs")
        else:
            print("note: graft_fx.realign takes no buckets=: graft-cudagraphs skipped")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    machine = announce(device, args.threads)
    print(f"modes eager, realigned, {', '.join(args.modes)}; freezing {args.freezing}; reps {args.reps} (median), "
          f"warmup {args.warmup}, rows per fragment {args.rows or f'1..{bench_realign.MAX_ROWS} (seeded)'}")
    results: list[Row] = []
    started = time.perf_counter()
    warm_up_inductor(device)
    with exact_fp32():
        for name in args.models:
            for k in args.k:
                results.append(measure(name, k, args, device))
                print(progress_line(results[-1]), flush=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print(f"\n{len(results)} settings in {time.perf_counter() - started:.0f} s\n")
    print(tables(results, args.modes, text_table))
    if args.markdown:
        print("\n" + tables(results, args.modes, markdown_table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "fusions": fusion_config(),
                       "rows": [asdict(r) for r in results]}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
