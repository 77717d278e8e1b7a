"""graft::gather (one launch for all inputs) against torch.cat and a loop of row-slice copies.

Inputs are what a realigned graph's junction sees: G contiguous narrow views (``base[a:b]``) of
one tensor, each of ``rows`` rows of shape ``row``, one dtype; the output is their rows in one
new tensor. Shapes: G in (2, 4, 8, 16), rows in (1, 8, 64), row in ([64, 56, 56], [768]) (a
conv feature map and a transformer token), ``--max-mb`` caps the output size. Methods:

- ``cat``: ``torch.cat(xs)``;
- ``loop``: ``out = torch.empty(...)``, then ``out[o:o + m].copy_(x)`` per input (one copy each);
- ``gather``: `graft_fx.kernels.gather.gather`, which runs the Triton kernel on CUDA. On the CPU
  it runs its reference (``torch.cat`` behind the custom op's dispatch) and that is what is
  timed: the Triton path needs a GPU (``--device cuda``). With ``TRITON_INTERPRET=1`` on the CPU
  the kernel runs in Triton's interpreter, which is for correctness only: its column is then
  checked against ``torch.cat`` (on outputs up to ``--interpret-max-mb``) and not timed.

Every timing is the median of ``torch.utils.benchmark.Timer.blocked_autorange`` (which
synchronises CUDA) in microseconds; GB/s counts the bytes read and written (2 x the output).
Before timing, ``gather``'s output is checked equal to ``torch.cat``'s. Run::

    python benchmarks/bench_gather.py                          # CPU: the torch paths
    python benchmarks/bench_gather.py --device cuda --json benchmarks/results/gather_cuda.json
    TRITON_INTERPRET=1 python benchmarks/bench_gather.py       # CPU: interpreter correctness check
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from kernel_bench import add_arguments, median_us, start, write_json

from graft_fx.kernels.dispatch import interpreting, use_triton
from graft_fx.kernels.gather import gather

GROUPS = (2, 4, 8, 16)
ROWS = (1, 8, 64)
ROW_SHAPES = ((64, 56, 56), (768,))


def inputs(groups: int, rows: int, row: tuple[int, ...], dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """``groups`` narrow views of ``rows`` rows each of one base tensor, one row apart."""
    base = torch.randn((groups * (rows + 1), *row), device=device).to(dtype)
    return [base[k * (rows + 1):k * (rows + 1) + rows] for k in range(groups)]


def copy_loop(xs: list[torch.Tensor]) -> torch.Tensor:
    out = torch.empty((sum(x.shape[0] for x in xs), *xs[0].shape[1:]), dtype=xs[0].dtype, device=xs[0].device)
    o = 0
    for x in xs:
        out[o:o + x.shape[0]].copy_(x)
        o += x.shape[0]
    return out


def measure(groups: int, rows: int, row: tuple[int, ...], args, kernel: str) -> dict[str, Any]:
    """One shape: each method's median µs (``gather``: None when it is only checked)."""
    xs = inputs(groups, rows, row, args.dtype, args.device)
    expected = torch.cat(xs)
    mb = expected.numel() * expected.element_size() / 2**20
    result: dict[str, Any] = {"groups": groups, "rows": rows, "row": list(row), "out_mb": round(mb, 3)}
    for name, fn in (("cat", torch.cat), ("loop", copy_loop)):
        result[f"{name}_us"] = median_us(fn, (xs,), args.min_run_time)
    if kernel == "interpreter":
        result["gather_us"] = None
        result["gather_checked"] = mb <= args.interpret_max_mb and torch.equal(gather(xs), expected)
    else:
        if not torch.equal(gather(xs), expected):
            raise AssertionError(f"gather differs from torch.cat at G={groups}, rows={rows}, row={list(row)}")
        result["gather_us"] = median_us(gather, (xs,), args.min_run_time)
        result["gather_checked"] = True
    return result


def table(results: list[dict[str, Any]], kernel: str) -> None:
    gather_label = {"triton": "gather (Triton) µs", "reference": "gather (op -> reference) µs",
                    "interpreter": "gather (interpreter)"}[kernel]
    print(f"| G | rows | row | out MB | cat µs | loop µs | {gather_label} | best torch GB/s | gather / best torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        best = min(r["cat_us"], r["loop_us"])
        gbps = 2 * r["out_mb"] * 2**20 / (best * 1e-6) / 1e9
        if r["gather_us"] is None:
            cell, ratio = ("checked" if r["gather_checked"] else "not checked (too large)"), "-"
        else:
            cell, ratio = f"{r['gather_us']:.1f}", f"{r['gather_us'] / best:.2f}"
        print(f"| {r['groups']} | {r['rows']} | {r['row']} | {r['out_mb']:.3f} | {r['cat_us']:.1f} | "
              f"{r['loop_us']:.1f} | {cell} | {gbps:.1f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--max-mb", type=float, default=1024.0, help="skip shapes whose output is larger (MiB)")
    parser.add_argument("--interpret-max-mb", type=float, default=1.0,
                        help="under TRITON_INTERPRET=1, check gather only on outputs this small (MiB)")
    args = parser.parse_args()
    args.dtype, machine = start(parser, args, {"cuda": "float32", "cpu": "float32"})
    probe = torch.empty(1, device=args.device)
    kernel = "triton" if use_triton(probe) and args.device == "cuda" else (
        "interpreter" if use_triton(probe) and interpreting() else "reference")
    print({"triton": "gather runs the Triton kernel: timed.",
           "reference": "CPU: only the torch paths are timed (gather falls back to its torch.cat reference "
                        "behind the op's dispatch); the Triton path needs a GPU: --device cuda.",
           "interpreter": "TRITON_INTERPRET=1: gather runs Triton's interpreter, checked against torch.cat, "
                          "not timed (correctness only); the torch paths are timed."}[kernel])
    print(f"dtype {args.dtype}, inputs: G narrow views of one tensor, rows rows of shape row each\n")
    results, skipped = [], []
    for row in ROW_SHAPES:
        for rows in ROWS:
            for groups in GROUPS:
                mb = groups * rows * torch.Size(row).numel() * args.dtype.itemsize / 2**20
                if mb > args.max_mb:
                    skipped.append((groups, rows, list(row)))
                    continue
                results.append(measure(groups, rows, row, args, kernel))
    table(results, kernel)
    if skipped:
        print(f"\nskipped (output over {args.max_mb} MiB): {skipped}")
    write_json(args.json, {"machine": machine, "dtype": str(args.dtype), "kernel": kernel, "results": results,
                           "skipped": skipped})


if __name__ == "__main__":
    main()
