"""graft::segment_matmul against torch's ways of running G Linear layers that differ in their weights.

Paths, each computing ``act(x[o_g : o_g + m] @ weight[g] + bias[g])`` for G segments of m rows
(x ``[G m, K]``, weight ``[G, K, N]`` as stacked ``nn.Linear`` weights give it, ``[G, N, K]``
transposed, unless ``--layout kn``; K = N):

* **loop + cat** -- one ``addmm`` per segment (``x_g @ w[g] + b[g]``, fused), then one copy of
  the outputs: G launches, what the realigned graph does without the kernel;
* **bmm** -- ``baddbmm`` over ``x.view(G, m, K)``: one launch, possible only because the segments
  here are of equal size (a realigned graph's are not);
* **_grouped_mm** -- ``torch._grouped_mm`` with int32 segment ends (then the bias added per row):
  PyTorch's grouped GEMM for MoE layers, CUDA bf16 on sm90+; "n/a" where it does not exist or
  refuses the inputs;
* **segment_matmul** -- the Triton kernel (`graft_fx.kernels.segment_matmul`): one launch.

Shapes: G in (2, 4, 8), m in (1, 8, 64) rows per segment, K = N in (768, 2048) on the GPU
(bfloat16 by default, so that _grouped_mm runs) and in (256, 768) on the CPU (float32). On the
CPU only the torch paths are timed: the Triton path needs a GPU. With ``TRITON_INTERPRET=1`` set,
the kernel runs under Triton's interpreter on the CPU, which is for correctness only: it is
checked against the loop at every shape, not timed. Times are the median of
``torch.utils.benchmark.Timer.blocked_autorange`` (CUDA synchronized, so launch overhead counts;
torch's CPU threads, ``--threads``), microseconds; "weight GB/s" is the kernel's weight bytes over
its time (small m is bound by reading the weights).

    python benchmarks/bench_segment_matmul.py                       # CPU: the torch paths
    python benchmarks/bench_segment_matmul.py --device cuda --json results/segment_matmul_gpu.json
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from kernel_bench import add_arguments, median_us, start, write_json

from graft_fx.kernels.dispatch import ACTIVATIONS, activate, interpreting, use_triton
from graft_fx.kernels.segment_matmul import segment_matmul

GROUPS = (2, 4, 8)
ROWS = (1, 8, 64)
SIZES = {"cuda": (768, 2048), "cpu": (256, 768)}


def loop_cat(x, weight, sizes, bias, activation):
    outs, start = [], 0
    for g, rows in enumerate(sizes):
        outs.append(torch.addmm(bias[g], x[start:start + rows], weight[g]))
        start += rows
    return activate(torch.cat(outs), activation)


def bmm(x, weight, sizes, bias, activation):
    groups, k = weight.shape[0], weight.shape[1]
    out = torch.baddbmm(bias[:, None, :], x.view(groups, sizes[0], k), weight)
    return activate(out.view(x.shape[0], -1), activation)


def grouped_mm_path(x: torch.Tensor, weight: torch.Tensor, sizes: list[int], bias: torch.Tensor):
    """``(path, None)``: ``torch._grouped_mm`` bound to this shape's segment ends and per-row
    bias (built once, outside the timing); or ``(None, why)`` where it does not exist or refuses
    the inputs (the table prints "n/a", the JSON row keeps ``why`` under ``"unavailable"``)."""
    if not hasattr(torch, "_grouped_mm"):
        return None, f"torch {torch.__version__} has no _grouped_mm"
    ends = torch.tensor(sizes, dtype=torch.int32).cumsum(0).to(dtype=torch.int32, device=x.device)
    bias_rows = torch.cat([bias[g].expand(rows, -1) for g, rows in enumerate(sizes)])

    def grouped_mm(x, weight, sizes, bias, activation):
        return activate(torch._grouped_mm(x, weight, offs=ends).add_(bias_rows), activation)

    try:
        grouped_mm(x, weight, sizes, bias, "none")
    except (RuntimeError, NotImplementedError, TypeError) as e:  # no kernel for this device, dtype or layout
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return grouped_mm, None


def operands(g: int, m: int, size: int, dtype: torch.dtype, device: str, layout: str):
    x = torch.randn(g * m, size, dtype=dtype, device=device)
    if layout == "linear":
        weight = (torch.randn(g, size, size, dtype=dtype, device=device) / size ** 0.5).transpose(1, 2)
    else:
        weight = torch.randn(g, size, size, dtype=dtype, device=device) / size ** 0.5
    return x, weight, [m] * g, torch.randn(g, size, dtype=dtype, device=device)


def case(g: int, m: int, size: int, dtype: torch.dtype, device: str, args) -> dict[str, Any]:
    """One shape: the times of the paths that run here, and the errors against the loop."""
    x, weight, sizes, bias = operands(g, m, size, dtype, device, args.layout)
    call = (x, weight, sizes, bias, args.activation)
    row: dict[str, Any] = {"segments": g, "rows_per_segment": m, "k": size, "n": size, "us": {}, "max_abs_error": {},
                           "unavailable": {}}
    paths = {"loop + cat": loop_cat, "bmm": bmm}
    expected = loop_cat(*call).float()
    grouped, why = grouped_mm_path(x, weight, sizes, bias) if device == "cuda" else (None, "CUDA only")
    if grouped is None:
        row["unavailable"]["_grouped_mm"] = why
    else:
        paths["_grouped_mm"] = grouped
        row["max_abs_error"]["_grouped_mm"] = (grouped(*call).float() - expected).abs().max().item()
    if use_triton(x):
        row["max_abs_error"]["segment_matmul"] = (segment_matmul(*call).float() - expected).abs().max().item()
        if device == "cuda":
            paths["segment_matmul"] = segment_matmul
    for name, fn in paths.items():
        row["us"][name] = median_us(fn, call, args.min_run_time)
    if "segment_matmul" in row["us"]:
        row["weight_gb_s"] = weight.numel() * weight.element_size() / row["us"]["segment_matmul"] / 1e3
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    names = ["loop + cat", "bmm", "_grouped_mm", "segment_matmul"]
    timed = [n for n in names if any(n in r["us"] for r in rows)]
    checked = [n for n in names if any(n in r["max_abs_error"] for r in rows)]
    kernel = "segment_matmul" in timed
    columns = (["segments", "rows/segment", "K = N"] + [f"{n} µs" for n in timed]
               + (["vs loop", "vs best torch", "weight GB/s"] if kernel else [])
               + [f"{n} max abs error" for n in checked])
    print("| " + " | ".join(columns) + " |\n|" + "---:|" * len(columns))
    for r in rows:
        us = r["us"]
        cells = [str(r["segments"]), str(r["rows_per_segment"]), str(r["k"])]
        cells += [f"{us[n]:.1f}" if n in us else "n/a" for n in timed]
        if kernel:
            best = min(t for n, t in us.items() if n != "segment_matmul")
            cells += [f"{us['loop + cat'] / us['segment_matmul']:.2f}x", f"{best / us['segment_matmul']:.2f}x",
                      f"{r['weight_gb_s']:.0f}"]
        cells += [f"{r['max_abs_error'][n]:.2e}" if n in r["max_abs_error"] else "n/a" for n in checked]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="K = N values (default: by device)")
    parser.add_argument("--groups", type=int, nargs="+", default=GROUPS, help="segments G")
    parser.add_argument("--rows", type=int, nargs="+", default=ROWS, help="rows per segment")
    parser.add_argument("--layout", choices=("linear", "kn"), default="linear",
                        help="weight storage: stacked nn.Linear [G, N, K] (transposed view) or [G, K, N]")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="none")
    args = parser.parse_args()
    dtype, machine = start(parser, args, {"cuda": "bfloat16", "cpu": "float32"})  # bf16: _grouped_mm runs
    sizes = args.sizes or SIZES[args.device]
    if args.device == "cpu":
        print("CPU: only the torch paths are timed; the Triton path needs a GPU (--device cuda)"
              + (". TRITON_INTERPRET=1: the kernel runs under the interpreter, checked against the loop, "
                 "not timed" if interpreting() else ""))
    print(f"dtype {dtype}, weight layout {args.layout}, bias on, activation {args.activation}, "
          f"timings: median of torch.utils.benchmark blocked_autorange, µs\n")
    torch.manual_seed(0)
    rows = [case(g, m, size, dtype, args.device, args) for size in sizes for g in args.groups for m in args.rows]
    print_table(rows)
    for why in sorted({why for r in rows for why in r["unavailable"].values()}):
        print(f"_grouped_mm n/a: {why}")
    write_json(args.json, {"machine": machine, "dtype": str(dtype), "layout": args.layout,
                           "activation": args.activation, "interpreter": interpreting(), "rows": rows})


if __name__ == "__main__":
    main()
