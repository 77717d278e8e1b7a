"""Measured latency profiles: time each piece of a model on the machine at hand.

`measure` cuts a model into pieces (`graft_fx.serving.pieces`), and times every piece alone on
random rows at every batch size, as eager PyTorch under ``torch.inference_mode``: ``warmup``
untimed runs, then ``reps`` timed ones, of which the profile keeps the median (``latency_s``) and
the 99th percentile (``p99_s``; with few repetitions, close to the slowest). On a GPU each run is
timed with CUDA events around it, so a run that is launch-bound measures the host's time to issue
its kernels, as a server would see it. With ``sms``, each piece is also timed on that many SMs
through a green context (``torch.cuda.green_contexts``, PyTorch 2.10+, CUDA 12.8+; counts are
rounded by the driver, to multiples of 8 on Hopper); a share that cannot be made is left out of
the profile and its reason kept in ``meta["share_errors"]``. On a CPU runs are timed with
``time.perf_counter``, and a share is a number of PyTorch's intra-op threads: with ``cores``,
each piece is timed with ``torch.set_num_threads(k)`` for each ``k`` (restored afterwards), at
share ``k / T`` of the ``T = torch.get_num_threads()`` threads the machine runs with (default:
all ``T`` only). That is how a CPU partition of the serving runtime runs a group (its worker
thread sets its own thread count), so the profile prices what the runtime does. Threads are not
isolated cores: other processes, and the other partitions' workers, compete for the same cores
and memory bandwidth, which a profile measured one share at a time on an idle machine does not
see.

**Precision** is part of what is measured, and a profile records it (``meta["precision"]``,
`profiles.PRECISIONS`): ``default`` is float32 as PyTorch runs it out of the box (cuDNN convolutions on TF32
tensor cores, ``torch.backends.cudnn.allow_tf32``; matrix products in full FP32,
``torch.backends.cuda.matmul.allow_tf32`` off); ``tf32`` puts matrix products on TF32 too;
``fp32`` turns TF32 off everywhere; ``bf16`` casts the pieces and their inputs to bfloat16.
The precision only changes kernels on GPUs with TF32/bf16 units (Ampere and later); on a CPU
``tf32`` is the same as ``fp32``.

`document` writes several profiles into one JSON file in the format of
`graft_fx.serving.profiles` (shares keyed by SM count, as the shipped H200 file is), which is what
``benchmarks/profile_gpu.py`` does.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import GraftError
from .pieces import select
from .profiles import PRECISIONS, Profile, memory_fields

EXECUTORS: dict[str, Callable[[torch.nn.Module], Callable]] = {
    "eager": lambda module: module,
    "compiled": lambda module: torch.compile(module, dynamic=False),
    "cudagraphs": lambda module: torch.compile(module, mode="reduce-overhead", dynamic=False),
}
"""How a piece runs while it is timed: as eager PyTorch, compiled by Inductor for each batch
size (static shapes), or compiled and replayed as a CUDA graph (``mode="reduce-overhead"``),
which removes the launch cost that dominates small batches on a GPU. A compiled executor is
warmed up at every batch size before it is timed (``warmup`` counts the runs after the first)."""

# precision (`profiles.PRECISIONS`) -> (cudnn.allow_tf32, cuda.matmul.allow_tf32, dtype to cast to)
_SWITCHES = {
    "default": (True, False, None),
    "tf32": (True, True, None),
    "fp32": (False, False, None),
    "bf16": (True, False, torch.bfloat16),
}

Progress = Any
"""A callable taking the number of steps just done, or a tqdm-like object (with ``update(n)``)."""


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU as "CPU (model, N cores, T threads)"."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_model() or platform.processor()
    parts = ([model] if model else []) + [f"{os.cpu_count()} cores", f"{torch.get_num_threads()} threads"]
    return f"CPU ({', '.join(parts)})"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _times_cuda(fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return times


def _times_cpu(fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


class _SMs:
    """Run a block on ``num_sms`` SMs (0: the whole device) through a green context."""

    def __init__(self, num_sms: int, device: torch.device):
        self.num_sms, self.device, self.ctx = num_sms, device, None

    def __enter__(self):
        if self.num_sms:
            self.ctx = torch.cuda.green_contexts.GreenContext.create(
                num_sms=self.num_sms, device_id=self.device.index or 0)
            self.ctx.set_context()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.pop_context()
        return False


class _Threads:
    """Run a block on ``threads`` of PyTorch's intra-op threads (``torch.set_num_threads``, which
    holds for the calling thread), restoring the count afterwards."""

    def __init__(self, threads: int):
        self.threads, self.saved = threads, None

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
        return False


def _advance(progress: Progress | None, n: int) -> None:
    if progress is None:
        return
    update = getattr(progress, "update", None)
    (update or progress)(n)


def measure(model: Any, example: Any, name: str, *, pieces: int = 10,
            batches: Sequence[int] = (1, 2, 4, 8, 16), device: str | torch.device = "cpu",
            reps: int = 10, warmup: int = 3, sms: Sequence[int] | None = None,
            cores: Sequence[int] | None = None, precision: str = "default",
            executor: str = "eager", progress: Progress | None = None) -> Profile:
    """A measured `Profile` of ``model`` (``example``: an input with a batch dim 0, any size).

    ``sms``: SM counts to time at on a GPU (0 or the device's count: the whole device; default:
    the whole device only); not on a CPU. ``cores``: thread counts to time at on a CPU (each in
    ``1 .. torch.get_num_threads()``; default: all threads only); not on a GPU. ``precision`` is one of `profiles.PRECISIONS` (see the module
    docstring). ``executor`` is one of `EXECUTORS` (``"cudagraphs"`` on CUDA only). ``progress`` receives one step per timed (piece, share,
    batch) cell: it is called with the number of steps done, or, if it has an ``update`` method
    (a tqdm bar), that is called. If it has a ``total`` attribute, ``measure`` adds its own
    number of steps to it once the pieces are known, so one bar can follow several models.

    The model is left where it is: on another device the pieces run on a copy. ``meta`` holds
    ``torch``, ``dtype``, ``precision``, ``executor``, ``timing`` (what was timed, how), ``sm_count`` and ``sm_counts`` (the
    device's SMs and those of each share, 0 for the whole device; None on a CPU), ``cores``
    (on a CPU, the thread count of each share, ascending; None on a GPU), ``raw_latency_s`` (the medians before the profile made them monotone) and, where a share
    could not be made, ``share_errors``.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if reps < 1 or warmup < 0:
        raise GraftError(f"reps={reps}, warmup={warmup}: expected reps >= 1 and warmup >= 0")
    if precision not in PRECISIONS:
        raise GraftError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if executor not in EXECUTORS or (executor == "cudagraphs" and device.type != "cuda"):
        raise GraftError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)} (cudagraphs on CUDA only)")
    batches = sorted({int(b) for b in batches})
    sel = select(model, example, pieces)
    modules = sel.modules()
    cast = _SWITCHES[precision][2]
    if cast is not None or any(t.device != device for m in modules for t in (*m.parameters(), *m.buffers())):
        modules = [copy.deepcopy(m).to(device, cast) for m in modules]
    if device.type == "cuda":
        if cores is not None:
            raise GraftError(f"cores={list(cores)}: thread shares exist on a CPU only; on {device} use sms")
        total = total_sms = torch.cuda.get_device_properties(device).multi_processor_count
        counts = sorted({total_sms if s in (0, None) else int(s) for s in (sms or [0])})
        if any(not 0 < s <= total_sms for s in counts):
            raise GraftError(f"sms={list(sms or [])}: expected counts in 1..{total_sms} (or 0 for all)")
        timed = _times_cuda

        def share_of(count: int) -> contextlib.AbstractContextManager:
            return _SMs(0 if count == total_sms else count, device)
    else:
        if sms and any(s not in (0,) for s in sms):
            raise GraftError(f"sms={list(sms)}: SM shares exist on CUDA devices only, not on {device}")
        total, total_sms, timed = torch.get_num_threads(), None, _times_cpu
        counts = sorted({int(k) for k in cores}) if cores is not None else [total]
        if not counts or any(not 0 < k <= total for k in counts):
            raise GraftError(f"cores={list(cores or [])}: expected thread counts in 1..{total} "
                             f"(torch.get_num_threads())")
        share_of = _Threads
    if progress is not None and getattr(progress, "total", False) is not False:
        progress.total = (progress.total or 0) + len(modules) * len(counts) * len(batches)
        if hasattr(progress, "refresh"):
            progress.refresh()

    latency, p99, kept, errors = [], [], [], {}
    for count in counts:
        try:
            with _precision(precision):
                cells = _time_share(sel, modules, share_of(count), device, batches, timed, reps, warmup,
                                    cast, EXECUTORS[executor], progress)
        except Exception as e:  # noqa: BLE001 - a share of a GPU that cannot be made is data too
            if total_sms is None or count == total_sms:
                raise
            errors[str(count)] = f"{type(e).__name__}: {e}"
            continue
        kept.append(count)
        latency.append(cells[0])
        p99.append(cells[1])
    if not kept:
        raise GraftError(f"no share could be measured: {errors}")
    shares = [c / total for c in kept]
    meta = {"torch": torch.__version__, "dtype": str(cast or sel.row_dtype(0)).replace("torch.", ""),
            "executor": executor,
            "precision": f"{precision}: " + (PRECISIONS[precision] if device.type == "cuda" or precision == "bf16"
                                             else "float32 (a CPU has no TF32)"),
            "timing": (f"median and p99 of {reps} after {warmup} warm-up, "
                       + ("CUDA events" if device.type == "cuda" else
                          f"perf_counter, on {'/'.join(map(str, kept))} of {total} threads")),
            "sm_count": total_sms, "sm_counts": [0 if c == total_sms else c for c in kept] if total_sms else None,
            "cores": None if total_sms else kept}
    # latency[share][piece][batch] -> [piece, share, batch]
    table = np.transpose(np.array(latency), (1, 0, 2))
    tail = np.maximum(np.transpose(np.array(p99), (1, 0, 2)), table)
    meta["raw_latency_s"] = table.tolist()  # as measured: a Profile makes its table monotone
    if errors:
        meta["share_errors"] = errors
    profile = Profile(name, device_name(device), "measured", sel.pieces, np.array(shares), np.array(batches),
                      table, None, meta)
    # the p99 of a cell is at least its median, also where the profile's table was made monotone
    return dataclasses.replace(profile, p99_s=np.maximum(tail, profile.latency_s))


CALIBRATION_QUANTILE = 90
"""The percentile of the timed runs' ratios to the profile that `calibrate` scales by."""


def calibrate(profile: Profile, model: Any, example: Any, *, device: str | torch.device = "cpu",
              reps: int = 10, progress: Progress | None = None) -> Profile:
    """``profile`` scaled to how fast this device runs now: `Profile.scaled` by the ratio of
    fragment 0's tail (the model from the profile's first cut: the whole model when that is the
    input), timed now at one row and at the largest batch, to what the profile says for it.

    A cached profile is a measurement of one moment. A shared host's speed drifts: on the 2-core
    development VM a resnet18 batch took 180 to 250 ms within one minute, and a cached
    mobilenet_v2 profile read half of what the model took an hour later. A plan and a runtime
    priced on another moment's speed promise what this one cannot keep; the profile's shape
    (which piece costs what at which batch) holds, its scale drifts. So each share is timed
    ``reps`` times per batch size (after one warm-up), spread over some seconds, while the rest of
    the CPU's threads run the same model (`_neighbours`: partitions of a CPU run side by side
    and slow each other through shared caches and memory, by about 10% on the development VM),
    and scaled by the
    `CALIBRATION_QUANTILE` percentile of the ratios of its two batch sizes, the larger: the
    profile then describes the slow end of the drift, which is what deadlines must survive. On a
    CPU each share is timed at its thread count; on a GPU the whole device is timed and its factor
    applies to every share. ``progress`` gets one step per timed batch size and share.
    """
    device = torch.device(device)
    sel = select(model, example, at=[profile.fragments[0]])
    tail = sel.modules()[0]
    if any(t.device != device for t in (*tail.parameters(), *tail.buffers())):
        tail = copy.deepcopy(tail).to(device)
    cpu = device.type == "cpu"
    threads = torch.get_num_threads()
    largest = int(profile.batches[-1])
    factors = []
    with torch.inference_mode():
        for share in profile.shares if cpu else [1.0]:
            ratios = []
            mine = max(1, round(share * threads))
            for rows in (1, largest):
                x = _rows(rows, sel.pieces[0].row_shape, sel.row_dtype(0), device)
                if cpu:
                    torch.set_num_threads(mine)
                try:
                    with _neighbours(tail, _rows(largest, sel.pieces[0].row_shape, sel.row_dtype(0), device),
                                     threads - mine if cpu else 0):
                        times = (_times_cpu if cpu else _times_cuda)(lambda: tail(x), reps, 1)
                finally:
                    torch.set_num_threads(threads)
                expected = profile.fragment_s(0, rows, float(share))
                ratios.append(float(np.percentile(times, CALIBRATION_QUANTILE)) / expected)
                _advance(progress, 1)
            factors.append(max(ratios))
    factors = factors if cpu else factors * len(profile.shares)
    spread = ", ".join(f"x{f:.2f}" for f in factors)
    return profile.scaled(factors, f"calibrated to this device now ({spread} per share)")


@contextlib.contextmanager
def _neighbours(module: Any, x: torch.Tensor, threads: int):
    """While the block runs, ``module(x)`` runs over and over on a thread of its own with
    ``threads`` intra-op threads (none if 0): the load of the CPU's other partitions."""
    if threads <= 0:
        yield
        return
    stop = threading.Event()

    def work():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            while not stop.is_set():
                module(x)

    worker = threading.Thread(target=work, name="graft-calibration-neighbour", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


@contextlib.contextmanager
def _precision(precision: str):
    """PyTorch's TF32 switches set for ``precision``, restored afterwards."""
    cudnn, matmul, _ = _SWITCHES[precision]
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _time_share(sel, modules, share, device, batches, timed, reps, warmup, cast, execute, progress):
    """``(median[piece][batch], p99[piece][batch])`` inside the context ``share`` (SMs or threads),
    each piece run as ``execute(piece)`` (`EXECUTORS`)."""
    med, tail = [], []
    with share, torch.inference_mode():
        for i, module in enumerate(modules):
            shape, dtype = sel.pieces[i].row_shape, sel.row_dtype(i)
            dtype = cast if cast is not None and dtype.is_floating_point else dtype
            run = execute(module)
            row_m, row_t = [], []
            for b in batches:
                x = _rows(b, shape, dtype, device)
                if run is not module:
                    run(x)  # compiles for this batch size, outside the timed runs
                times = timed(lambda: run(x), reps, warmup)
                row_m.append(statistics.median(times))
                row_t.append(float(np.percentile(times, 99)))
                _advance(progress, 1)
            med.append(row_m)
            tail.append(row_t)
    return med, tail


def _rows(batch: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(batch, *shape, dtype=dtype, device=device)
    return torch.zeros(batch, *shape, dtype=dtype, device=device)


def document(profiles: Sequence[Profile], **extra: Any) -> dict[str, Any]:
    """Measured profiles of several models on one device as one JSON document in the format of
    `graft_fx.serving.profiles` (``from_json`` reads it back). Profiles measured on a GPU by
    `measure` are keyed by SM count ("0": the whole device) with ``sm_count`` set; others by share
    fraction. ``extra`` entries go at the top level (e.g. ``input_side`` is per model: pass
    ``models_extra={"resnet50": {"input_side": 224}}``)."""
    if not profiles:
        raise GraftError("document: no profiles")
    first = profiles[0]
    batches = [int(b) for b in first.batches]
    if any(p.device != first.device or [int(b) for b in p.batches] != batches for p in profiles):
        raise GraftError("document: the profiles must share one device and one list of batch sizes")
    sm_count = first.meta.get("sm_count")
    models_extra = extra.pop("models_extra", {})
    errors: dict[str, str] = {}
    models = {}
    for p in profiles:
        errors.update(p.meta.get("share_errors", {}))
        if sm_count and p.meta.get("sm_count") == sm_count:
            keys = [str(int(c)) for c in p.meta["sm_counts"]]
        else:
            keys = [repr(float(s)) for s in p.shares]
        pieces = []
        for i, piece in enumerate(p.pieces):
            entry = {"from": piece.start, "to": piece.end, "flops_share": piece.flops_share,
                     "activation_bytes": piece.activation_bytes, "row_shape": list(piece.row_shape),
                     **memory_fields(piece)}
            raw = p.meta.get("raw_latency_s")
            median = p.latency_s if raw is None else np.asarray(raw)
            for field, table in (("latency_ms", median), ("latency_p99_ms", p.p99_s)):
                if table is not None:
                    entry[field] = {k: {str(b): float(table[i, j, n]) * 1e3 for n, b in enumerate(batches)}
                                    for j, k in enumerate(keys)}
            pieces.append(entry)
        models[p.model] = {**models_extra.get(p.model, {}), "pieces": pieces}
    meta = first.meta
    return {"device": first.device, "sm_count": sm_count, "source": first.source,
            **{k: meta[k] for k in ("torch", "dtype", "precision", "executor", "timing") if k in meta},
            "batches": batches, **extra, "models": models, "share_errors": errors}
