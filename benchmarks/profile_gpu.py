"""Measure per-segment latency against batch size and SM share: raw data for GPU latency profiles.

Each torchvision model is cut at up to ``--pieces + 1`` points spread over its cut points
(``graft_fx.cut_points``), and each *piece* (the layers between two consecutive cuts, built with
``graft_fx.split``) is timed alone on random activations at every batch size, with CUDA events,
as the median of ``--reps`` runs after warm-up. Where PyTorch can confine work to part of the GPU
(green contexts, ``torch.cuda.green_contexts``, PyTorch 2.10+), each piece is also timed at several
SM counts; a share that cannot be made is recorded with the reason instead.

The output JSON is device data: commit it under benchmarks/ with the device it came from. The
latency of a fragment (the tail from a cut on) is approximately the sum of its pieces, since eager
execution launches the pieces' kernels one after another.

    python benchmarks/profile_gpu.py --out graft_fx/serving/data/profiles/h200.json
    python benchmarks/profile_gpu.py --device cpu --models resnet50 --batches 1,2 --sms 0 --reps 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Any, Callable, Iterator

import torch
import torchvision

import graft_fx

MODELS = {"resnet50": 224, "vgg16": 224, "mobilenet_v2": 224, "inception_v3": 299, "vit_b_16": 224}
MIN_WORK_LEFT = 0.02  # the last piece must still hold this fraction of the model's FLOPs


def spread(cuts: list[graft_fx.CutPoint], pieces: int) -> list[graft_fx.CutPoint]:
    usable = [c for c in cuts if c.flops_before <= 1 - MIN_WORK_LEFT]
    picks = sorted({round(i * (len(usable) - 1) / pieces) for i in range(pieces + 1)})
    return [usable[i] for i in picks]


def build_pieces(name: str, device: torch.device, pieces: int) -> tuple[list[dict[str, Any]], int]:
    """[(from cut, to cut or None for the end, module, row shape, flops share)] of one model."""
    kwargs = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    side = MODELS[name]
    example = torch.randn(1, 3, side, side)
    cuts = spread(graft_fx.cut_points(model, example), pieces)
    out = []
    for i, cut in enumerate(cuts):
        head, tail = graft_fx.split(model, cut, example)
        activation = head(example)
        end = cuts[i + 1] if i + 1 < len(cuts) else None
        piece = graft_fx.split(tail, end.name, activation)[0] if end else tail
        stop = end.flops_before if end else 1.0
        out.append({"from": cut.name, "to": end.name if end else "output", "flops_share": stop - cut.flops_before,
                    "activation_bytes": cut.activation_bytes, "module": piece,
                    "row_shape": tuple(activation.shape[1:])})
    for p in out:  # only now: the pieces share their layers with the model the heads still run
        p["module"].to(device)
    return out, side


def timer(device: torch.device) -> Callable[[Callable[[], Any], int, int], float]:
    def cuda_time(fn: Callable[[], Any], reps: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    def cpu_time(fn: Callable[[], Any], reps: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    return cuda_time if device.type == "cuda" else cpu_time


@contextlib.contextmanager
def sm_share(num_sms: int, device: torch.device) -> Iterator[None]:
    """Run the block on ``num_sms`` SMs (0: the whole device) through a green context."""
    if num_sms == 0:
        yield
        return
    ctx = torch.cuda.green_contexts.GreenContext.create(num_sms=num_sms, device_id=device.index or 0)
    ctx.set_context()
    try:
        yield
    finally:
        ctx.pop_context()


def profile(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    timed = timer(device)
    batches = [int(b) for b in args.batches.split(",")]
    shares = [int(s) for s in args.sms.split(",")]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "sm_count": torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None,
        "torch": torch.__version__, "dtype": "float32", "timing": f"median of {args.reps} after {args.warmup} warm-up",
        "batches": batches, "models": {}, "share_errors": {},
    }
    for name in args.models.split(","):
        started = time.time()
        pieces, side = build_pieces(name, device, args.pieces)
        entries = []
        for p in pieces:
            latency: dict[str, dict[str, float]] = {}
            for sms in shares:
                try:
                    with sm_share(sms, device), torch.inference_mode():
                        latency[str(sms)] = {
                            str(b): timed(lambda x=torch.randn(b, *p["row_shape"], device=device): p["module"](x),
                                          args.reps, args.warmup)
                            for b in batches
                        }
                except Exception as e:  # noqa: BLE001 - a share that cannot be made is data too
                    result["share_errors"][str(sms)] = f"{type(e).__name__}: {e}"
            entries.append({k: v for k, v in p.items() if k != "module"} | {"latency_ms": latency})
            del p["module"]
        result["models"][name] = {"input_side": side, "pieces": entries}
        print(f"{name}: {len(entries)} pieces in {time.time() - started:.1f} s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--pieces", type=int, default=10, help="pieces per model (default: 10)")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--sms", default="0,16,32,64,96", help="SM counts; 0 is the whole device")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result = profile(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
