"""What the kernel benchmarks (bench_gather.py, bench_gather_linear.py, bench_segment_matmul.py)
share: their common flags, the start that checks and describes the machine, the timer, and the
result file.

    from kernel_bench import add_arguments, median_us, start, write_json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

from machine import describe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` (default: the script's, per device), ``--min-run-time``,
    ``--threads`` and ``--json``."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="default: the script's for the device")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds of timing per path and shape")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    parser.add_argument("--json", type=Path, default=None, help="write the results (and the machine) here")


def start(parser: argparse.ArgumentParser, args: argparse.Namespace, dtypes: dict[str, str]) -> tuple[torch.dtype,
                                                                                                     dict[str, Any]]:
    """Check ``--device``, set ``--threads``, print the machine; the dtype (``--dtype``, else
    ``dtypes[device]``) and the machine's description."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe(args.device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    return getattr(torch, args.dtype or dtypes[args.device]), machine


def median_us(fn, args: tuple, min_run_time: float) -> float:
    """The median time of ``fn(*args)`` in microseconds (``torch.utils.benchmark``'s blocked
    autorange, which synchronises CUDA), on torch's current threads."""
    timer = Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def write_json(path: Path | None, doc: dict[str, Any]) -> None:
    """Write ``doc`` (with the time it was written) to ``path``, if given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"at": datetime.datetime.now().isoformat(timespec="seconds"), **doc}, indent=1))
    print(f"\nwrote {path}")
