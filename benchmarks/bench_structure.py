"""Structural sharing on the CPU: k fine-tuned copies of one model, batched by graft against run one
by one and against torch.func's ensembling recipe.

For each model and each k, k copies of the model with differently perturbed weights each get
``--rows`` rows (equal rows: the ensembling recipe needs them). Timed, on the same inputs:

    separate   each copy on its own rows, one after the other
    graft      ``realign(copies, share="structure", kernels=...)`` on all rows at once: the
               copies' shared layers batched, each layer whose weights differ run per copy
               (``--kernels torch``) or through graft's ops (``--kernels triton``: on a CPU
               without Triton's interpreter the ops run their torch references)
    vmap       ``torch.func.stack_module_state`` + ``functional_call`` under ``torch.func.vmap``
               over the copies, the recipe a PyTorch user reaches for (inputs stacked [k, rows, ...])

Outputs are checked against separate execution before timing. Times are medians of
``--reps`` interleaved repetitions under ``torch.inference_mode``, in milliseconds.

    python benchmarks/bench_structure.py
    python benchmarks/bench_structure.py --models mlp --k 2,8 --rows 1,8 --json out.json
    python benchmarks/bench_structure.py --device cuda --kernels triton     # on a GPU: the kernels
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_realign import time_modes  # noqa: E402
from machine import describe  # noqa: E402

import graft_fx  # noqa: E402
from graft_fx.testing import fine_tuned  # noqa: E402


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    """A transformer-sized feed-forward stack: 4 x (Linear 768 -> 768, GELU), then LayerNorm."""
    layers = [m for _ in range(4) for m in (nn.Linear(768, 768), nn.GELU())]
    return nn.Sequential(*layers, nn.LayerNorm(768)), (768,)


def resnet18() -> tuple[nn.Module, tuple[int, ...]]:
    """torchvision's resnet18 (10 classes) on 64 x 64 images."""
    return torchvision.models.resnet18(weights=None, num_classes=10), (3, 64, 64)


MODELS = {"mlp": mlp, "resnet18": resnet18}


def copies(name: str, k: int) -> tuple[list[nn.Module], tuple[int, ...]]:
    """The model and k - 1 copies with every floating parameter and buffer perturbed by 2%."""
    torch.manual_seed(0)
    model, row = MODELS[name]()
    return fine_tuned(model.eval(), k), row


def vmapped(models: list[nn.Module]):
    """torch.func's ensembling: the copies' states stacked, one functional call vmapped over them."""
    params, buffers = torch.func.stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one(p, b, x):
        return torch.func.functional_call(skeleton, (p, b), (x,))

    run = torch.func.vmap(one)
    return lambda xs: run(params, buffers, torch.stack(xs))


def measure(name: str, k: int, rows: int, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    models, row = copies(name, k)
    models = [m.to(device) for m in models]
    xs = [torch.randn(rows, *row, device=device) for _ in models]
    start = time.perf_counter()
    rm = graft_fx.realign(models, [torch.randn(2, *row, device=device) for _ in models], share="structure",
                          kernels=args.kernels)
    realign_s = time.perf_counter() - start
    fns = {"separate": lambda xs: [m(x) for m, x in zip(models, xs)],
           "graft": lambda xs: rm(*xs),
           "vmap": vmapped(models)}
    with torch.inference_mode():
        expected = fns["separate"](xs)
        for got in (fns["graft"](xs), list(fns["vmap"](xs))):
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        ms = time_modes({n: functools.partial(fn, xs) for n, fn in fns.items()}, args.reps, 1, device)
    segments = [s for s in rm.plan.segments if s.batched]
    return {"model": name, "k": k, "rows": rows, **{f"{n}_ms": v for n, v in ms.items()},
            "realign_s": realign_s, "by_structure": sum(s.by_structure for s in segments),
            "batched_flops": rm.plan.batched_flops_fraction}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,resnet18")
    p.add_argument("--k", default="2,4,8", help="copies")
    p.add_argument("--rows", default="1,8", help="rows per copy")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--kernels", choices=("torch", "triton"), default="triton")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe(args.device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print(f"kernels {args.kernels}, median of {args.reps}, ms\n")
    print("| model | k | rows/copy | separate | graft | vmap | graft vs separate | graft vs vmap | layers by structure |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for name in args.models.split(","):
        for k in (int(x) for x in args.k.split(",")):
            for rows in (int(x) for x in args.rows.split(",")):
                r = measure(name, k, rows, args)
                results.append(r)
                print(f"| {name} | {k} | {rows} | {r['separate_ms']:.2f} | {r['graft_ms']:.2f} | "
                      f"{r['vmap_ms']:.2f} | {r['separate_ms'] / r['graft_ms']:.2f}x | "
                      f"{r['vmap_ms'] / r['graft_ms']:.2f}x | {r['by_structure']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "kernels": args.kernels, "reps": args.reps,
                                         "results": results}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
