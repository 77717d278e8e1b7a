"""graft::gather_linear against what a realigned graph does without it: one shared Linear over G inputs.

Paths, each computing ``F.linear(torch.cat(xs), weight, bias)`` for G inputs ``[m, K]`` and a
weight ``[N, K]`` (K = N):

* **cat + linear** -- what the realigned graph does today: copy the rows into one tensor, one GEMM;
* **linear per input + cat** -- G GEMMs (the weight read G times), then one copy of the outputs;
* **gather_linear** -- the Triton kernel (`graft_fx.kernels.gather_linear`): the rows read where
  they lie, one launch (plus one small host-to-device copy of its pointer table).

Shapes: G in (2, 4, 8), m in (1, 8, 64) rows per input, K = N in (768, 2048) on the GPU (float16
by default) and in (256, 768) on the CPU (float32). On the CPU only the torch paths are timed:
the Triton path needs a GPU. With ``TRITON_INTERPRET=1`` set, the kernel runs under Triton's
interpreter on the CPU, which is for correctness only: it is checked against the reference at
every shape, not timed. Times are the median of ``torch.utils.benchmark.Timer.blocked_autorange``
(CUDA synchronized; torch's CPU threads, ``--threads``: on a CPU shared with other work, 1 thread
gives steadier figures than a multi-threaded GEMM that waits for a preempted thread), microseconds.

    python benchmarks/bench_gather_linear.py --threads 1            # CPU: the torch paths
    python benchmarks/bench_gather_linear.py --device cuda --json results/gather_linear_gpu.json
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from kernel_bench import add_arguments, median_us, start, write_json

from graft_fx.kernels.dispatch import interpreting, use_triton
from graft_fx.kernels.gather_linear import gather_linear, gather_linear_reference

INPUTS = (2, 4, 8)
ROWS = (1, 8, 64)
SIZES = {"cuda": (768, 2048), "cpu": (256, 768)}


def cat_linear(xs, weight, bias):
    return F.linear(torch.cat(xs), weight, bias)


def linear_per_input(xs, weight, bias):
    return torch.cat([F.linear(x, weight, bias) for x in xs])


def case(g: int, m: int, size: int, dtype: torch.dtype, device: str, args) -> dict[str, Any]:
    """One shape: the times of the paths that run here, and the kernel's error against the reference."""
    xs = [torch.randn(m, size, dtype=dtype, device=device) for _ in range(g)]
    weight = torch.randn(size, size, dtype=dtype, device=device) / size ** 0.5
    bias = torch.randn(size, dtype=dtype, device=device)
    row: dict[str, Any] = {"inputs": g, "rows_per_input": m, "k": size, "n": size, "us": {}}
    paths = {"cat + linear": cat_linear, "linear per input + cat": linear_per_input}
    kernel = use_triton(weight)
    if kernel:
        reference = gather_linear_reference(xs, weight, bias)
        row["max_abs_error"] = (gather_linear(xs, weight, bias) - reference).abs().max().item()
        if device == "cuda":
            paths["gather_linear"] = gather_linear
    for name, fn in paths.items():
        row["us"][name] = median_us(fn, (xs, weight, bias), args.min_run_time)
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    names = list(rows[0]["us"])
    extra = {}
    if "gather_linear" in names:
        extra["speedup over cat + linear"] = lambda r: f"{r['us']['cat + linear'] / r['us']['gather_linear']:.2f}x"
    if "max_abs_error" in rows[0]:
        extra["kernel max abs error"] = lambda r: f"{r['max_abs_error']:.2e}"
    columns = ["inputs", "rows/input", "K = N"] + [f"{n} µs" for n in names] + list(extra)
    print("| " + " | ".join(columns) + " |\n|" + "---:|" * len(columns))
    for r in rows:
        cells = [str(r["inputs"]), str(r["rows_per_input"]), str(r["k"])] + [f"{r['us'][n]:.1f}" for n in names]
        print("| " + " | ".join(cells + [cell(r) for cell in extra.values()]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="K = N values (default: by device)")
    args = parser.parse_args()
    dtype, machine = start(parser, args, {"cuda": "float16", "cpu": "float32"})
    sizes = args.sizes or SIZES[args.device]
    if args.device == "cpu":
        print("CPU: only the torch paths are timed; the Triton path needs a GPU (--device cuda)"
              + (". TRITON_INTERPRET=1: the kernel runs under the interpreter, checked against the reference, "
                 "not timed" if interpreting() else ""))
    print(f"dtype {dtype}, bias on, timings: median of torch.utils.benchmark blocked_autorange, µs\n")
    torch.manual_seed(0)
    rows = [case(g, m, size, dtype, args.device, args) for size in sizes for g in INPUTS for m in ROWS]
    print_table(rows)
    write_json(args.json, {"machine": machine, "dtype": str(dtype), "interpreter": interpreting(), "rows": rows})


if __name__ == "__main__":
    main()
