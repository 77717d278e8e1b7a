"""Measure per-piece latency against batch size and SM share: raw data for GPU latency profiles.

A thin script over `graft_fx.serving.measure.measure`: each torchvision model (random weights) is
cut at up to ``--pieces + 1`` points spread over its cut points (`graft_fx.serving.pieces`), and
each piece is timed alone on random activations at every batch size, with CUDA events, as the
median (and p99) of ``--reps`` runs after warm-up. Where PyTorch can confine work to part of the
GPU (green contexts, ``torch.cuda.green_contexts``, PyTorch 2.10+), each piece is also timed at
several SM counts; a share that cannot be made is recorded under ``share_errors`` instead.

The output JSON holds every model, keyed by SM count ("0": the whole device) with ``sm_count``
set, in the format `graft_fx.serving.profiles` reads; it is device data: ship it under
graft_fx/serving/data/profiles/ or commit it under benchmarks/ with the device it came from.

    python benchmarks/profile_gpu.py --out graft_fx/serving/data/profiles/h200.json
    python benchmarks/profile_gpu.py --executor cudagraphs --out graft_fx/serving/data/profiles/h200_cudagraphs.json
    python benchmarks/profile_gpu.py --device cpu --models resnet50 --batches 1,2 --sms 0 --reps 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from graft_fx.serving import zoo
from graft_fx.serving.measure import EXECUTORS, document, measure
from graft_fx.serving.profiles import PRECISIONS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.BENCHMARK_MODELS))
    p.add_argument("--pieces", type=int, default=10, help="pieces per model (default: 10)")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--sms", default="0,16,32,64,96", help="SM counts; 0 is the whole device")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="default", choices=sorted(PRECISIONS),
                   help="default: float32 with TF32 convolutions and FP32 matmuls, PyTorch's defaults")
    p.add_argument("--executor", default="eager", choices=sorted(EXECUTORS),
                   help="how each piece runs while timed (graft_fx.serving.measure.EXECUTORS); "
                        "cudagraphs: compiled per batch size and replayed as CUDA graphs")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    sms = [int(s) for s in args.sms.split(",")]
    on_gpu = torch.device(args.device).type == "cuda"
    profiles, sides = [], {}
    for name in args.models.split(","):
        started = time.time()
        model, example = zoo.build(name)
        profiles.append(measure(model, example, name, pieces=args.pieces, batches=batches,
                                device=args.device, reps=args.reps, warmup=args.warmup,
                                sms=sms if on_gpu else None, precision=args.precision, executor=args.executor))
        sides[name] = {"input_side": example.shape[-1]}
        print(f"{name}: {len(profiles[-1].pieces)} pieces in {time.time() - started:.1f} s", flush=True)
        if on_gpu:
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(document(profiles, models_extra=sides), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
