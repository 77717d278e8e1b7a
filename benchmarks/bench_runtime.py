"""The serving runtime's own cost and its throughput at an SLO on this CPU (issue 9).

Three sections, each printing a Markdown table headed by the machine description
(`machine.describe`); ``--section`` picks some (default: all three). Every figure comes from
``time.perf_counter`` (wall time) or ``time.thread_time`` (the calling thread's CPU time) taken
around pieces of the runtime from the outside: its worker class is subclassed for the duration
of a runtime's construction (`timed_workers`), graft_fx itself is not modified.

1. **dispatch** -- the runtime's time per batch with the model taken out. Its one instance is
   `NullInstance`, whose ``run`` returns its input rows (about a microsecond, timed inside
   ``run`` and subtracted). The profile prices every batch at ~1 ms and has ``max_batch`` = B,
   requests get a 60 s budget, so a batch starts exactly when B requests wait: every batch holds B
   rows, B in (1, 8, 32). One client thread keeps ``max(4 B, 16)`` requests outstanding
   (submits, and waits on the oldest future when that many are unanswered; no done callbacks).
   Per request: the ``submit`` call (the *submit path*: checks, metrics, routing, admission
   control, queueing). Per batch: the worker's ``_next`` less the time it waited on its
   condition (poll, drops, pop: the *poll path*) and ``_execute`` less the instance's ``run``
   (answering the futures, metrics: the *answer path*), wall and thread CPU; and the whole run's
   wall time divided by its batches, less the run time (what the runtime costs a batch when the
   GIL is shared by the client that saturates it). Also: one request at a time at B = 1 (the round
   trip an idle runtime adds to a lone request: two thread hand-offs), the submit path against
   the queue depth (the worker held inside ``run`` while 992 more requests queue), and the
   per-call cost of a few pieces in isolation. Microseconds; median and p99 over batches (or
   requests) of each repeat, then the median over ``--repeats`` repeats with the min-max of the
   repeats' figures as the spread.

2. **http** -- the tiny MLP of ``tests/serving/fixtures.py`` (`small_runtime`, one group of all
   its fragment types, 1 s budget) behind `graft_fx.serving.http.Server`; requests of fragment
   type 0 (one row of 16 float32). Sequentially (one request in flight), latency of
   ``runtime.submit(...).result()`` in the server's process against, from a separate client
   process (as a phone would be; it does not share the server's GIL), ``tritonclient.http``
   ``infer`` with binary tensor data and with JSON data and a raw ``httpx`` POST of binary and of
   JSON bodies. A lone request would wait for its batch's latest start (the batching policy
   waits for rows while its deadline allows), so the sequential runtime is priced with
   ``max_batch`` 1 (its p99 profile cut at one row): every request starts as soon as it arrives.
   HTTP overhead = HTTP median - in-process median. The HTTP paths go to `TcpServer`, the
   `http.Server` on a socket made with proto IPPROTO_TCP: the shipped one's socket (proto 0) gets
   no TCP_NODELAY from asyncio, and every response then waits ~40 ms for the client's delayed
   ACK; one row (a few requests) shows the shipped one. Then 8 closed-loop client threads for
   ``--http-seconds`` seconds: requests/s in-process and over HTTP (tritonclient binary, httpx
   binary), on the unbatched runtime and on the batching one (max batch 8, 0.25 s budget: with 8
   clients every batch holds 8 rows). Milliseconds and requests/s.

3. **slo** -- throughput at an SLO for ``--models`` (resnet50, mobilenet_v2) on this CPU. The
   model (`zoo.build`), its CPU profile (`profile_cache.measured_here`: cached; the first call
   measures it, seconds to minutes), and, for each offered rate, a plan (`planner.plan` with
   ``realign=True`` and this CPU's partitions of whole cores, `partitions.for_device`) for
   ``--fragments`` (default: the middle cut) at that rate with the model's budget (default 500 ms
   resnet50, 200 ms mobilenet_v2), served by a `Runtime` on instances built once per grouping
   (`instances.build`, what `Runtime.from_model` does; checked against the model the first time),
   with ``gc.freeze()`` once it is built. Open-loop Poisson arrivals at the rate for
   ``--seconds`` seconds (`loadgen.replay`), each with deadline = arrival + budget. Rates are
   fractions of the fluid capacity (`planner.fluid_bound`: the rate that fills the CPU with no
   latency constraint), ascending; the sweep stops at a rate the planner cannot fit on this one
   CPU (said so), or after a rate below 50% attainment. Per rate: offered and goodput (answered
   on time per second), attainment, rejections by reason, p50/p99 server latency (ms, answered
   requests, submission to answer), mean batch, the plan. Throughput at SLO = the highest offered
   rate with attainment >= 99%.

Run (each invocation well under 10 minutes on the 2-core development machine)::

    python benchmarks/bench_runtime.py --section dispatch http
    python benchmarks/bench_runtime.py --section slo --models resnet50
    python benchmarks/bench_runtime.py --section slo --models mobilenet_v2
    python benchmarks/bench_runtime.py --quick            # every section, briefly (a smoke test)

Each run appends its sections to ``--json`` (default benchmarks/results/runtime_<date>.json), so
that repeat runs are kept side by side. ``--price-scale k`` plans and prices the SLO sweep on the
profile with every latency k times as long (a profile calibrated to what batches take in the
runtime: the sweep's "batch time / price" column measures that ratio).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import multiprocessing
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from time import perf_counter, thread_time
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.serving.fixtures: the tiny MLP runtime and the sleepy profile

from machine import describe  # noqa: E402

from graft_fx.capture import InputSpec  # noqa: E402
from graft_fx.errors import GraftError  # noqa: E402
from graft_fx.serving import runtime as runtime_module  # noqa: E402
from graft_fx.serving.runtime import Runtime  # noqa: E402

BUDGETS_MS = {"resnet50": 500.0, "mobilenet_v2": 200.0}
FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 1.0)  # of the fluid capacity, for the SLO sweep


# ---------------------------------------------------------------------------------------------
# Instruments


class _TimedCondition(threading.Condition):
    """A condition that adds up the wall time its waits take (one worker thread waits on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.waited_s = 0.0
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        t = perf_counter()
        try:
            return super().wait(timeout)
        finally:
            self.waited_s += perf_counter() - t


class TimedWorker(runtime_module._Worker):
    """The runtime's worker, timed: per batch, ``_next`` less its waits (``poll_*``) and
    ``_execute`` (``execute_*``), wall (perf_counter) and this thread's CPU (thread_time)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cond = _TimedCondition()  # before the thread starts: Runtime starts them all after
        self.poll_s: list[float] = []
        self.poll_cpu_s: list[float] = []
        self.execute_s: list[float] = []
        self.execute_cpu_s: list[float] = []

    def _next(self):
        waited, t, c = self.cond.waited_s, perf_counter(), thread_time()
        batch = super()._next()
        c, t = thread_time() - c, perf_counter() - t
        if batch is not None:
            self.poll_s.append(t - (self.cond.waited_s - waited))
            self.poll_cpu_s.append(c)
        return batch

    def _execute(self, k, batch, synchronize):
        t, c = perf_counter(), thread_time()
        super()._execute(k, batch, synchronize)
        self.execute_cpu_s.append(thread_time() - c)
        self.execute_s.append(perf_counter() - t)

    def reset(self) -> None:
        for series in (self.poll_s, self.poll_cpu_s, self.execute_s, self.execute_cpu_s):
            series.clear()


@contextlib.contextmanager
def timed_workers():
    """Runtimes built inside get `TimedWorker`s (the module's ``_Worker`` is swapped meanwhile)."""
    plain = runtime_module._Worker
    runtime_module._Worker = TimedWorker
    try:
        yield
    finally:
        runtime_module._Worker = plain


class NullInstance:
    """An `instances.Instance` look-alike that does no work: ``run`` answers each request with its
    own input row, and records how long it took (``run_s``). With ``gate`` set, ``run`` first
    waits for it (``entered`` says it has begun)."""

    def __init__(self, fragments: tuple[int, ...] = (0,), width: int = 4):
        self.fragments, self.width = fragments, width
        self.run_s: list[float] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def input_spec(self, fragment: int) -> InputSpec:
        return InputSpec((self.width,), torch.float32, None)

    def output_spec(self, fragment: int):
        return (self.width,), torch.float32

    def run(self, fragments, rows):
        t = perf_counter()
        if self.gate is not None:
            self.entered.set()
            self.gate.wait()
            t = perf_counter()
        out = list(rows)
        self.run_s.append(perf_counter() - t)
        return out


def us(seconds) -> float:
    return float(seconds) * 1e6


def stats(values, scale: float = 1e6) -> dict[str, float]:
    """Median and p99 (and the count) of ``values`` (seconds) in µs (``scale``: 1e3 for ms)."""
    a = np.asarray(values, dtype=float) * scale
    if not len(a):
        return {"n": 0, "median": math.nan, "p99": math.nan}
    return {"n": int(len(a)), "median": float(np.median(a)), "p99": float(np.percentile(a, 99))}


def over_repeats(per_repeat: list[dict[str, float]]) -> dict[str, Any]:
    """The median over repeats of each figure, and its min and max (the spread)."""
    keys = [k for k in per_repeat[0] if k != "n"]
    return {k: {"median": float(np.median([r[k] for r in per_repeat])),
                "min": float(min(r[k] for r in per_repeat)), "max": float(max(r[k] for r in per_repeat))}
            for k in keys}


def fmt(cell: dict[str, float], digits: int = 1) -> str:
    """"median (min-max)" of a figure over repeats."""
    return f"{cell['median']:.{digits}f} ({cell['min']:.{digits}f}-{cell['max']:.{digits}f})"


def header(title: str, machine: dict[str, Any]) -> None:
    print(f"\n### {title}\n")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + "\n")


# ---------------------------------------------------------------------------------------------
# 1. Dispatch overhead


def null_runtime(max_batch: int, budget_s: float = 60.0) -> tuple[Runtime, NullInstance]:
    """A runtime of one `NullInstance` group on the whole CPU; the profile prices a batch of b rows
    at 10 + b µs (+ the runtime's `OVERHEAD_S`) and batches hold up to ``max_batch`` rows."""
    from tests.serving.fixtures import hand_plan, sleepy_profile

    profile = sleepy_profile(fragments=1, base_s=1e-5, per_row_s=1e-6, max_batch=max_batch, width=4)
    instance = NullInstance()
    with timed_workers():
        runtime = Runtime(hand_plan(profile, ((0,),), budget_s=budget_s, shared=True), profile, [instance])
    return runtime, instance


def saturate(runtime: Runtime, instance: NullInstance, batch: int, requests: int) -> dict[str, Any]:
    """``requests`` (a multiple of ``batch``) through the runtime, ``max(4 batch, 16)`` outstanding."""
    worker: TimedWorker = runtime._partitions[0]
    worker.reset()
    waited, waits = worker.cond.waited_s, worker.cond.waits
    instance.run_s.clear()
    rows = torch.ones(1, 4)
    window = max(4 * batch, 16)
    submit_s, submit_cpu_s = [], []
    outstanding: deque[Future] = deque()
    wall = perf_counter()
    for _ in range(requests):
        if len(outstanding) >= window:
            outstanding.popleft().result()
        t, c = perf_counter(), thread_time()
        future = runtime.submit(0, rows)
        submit_cpu_s.append(thread_time() - c)
        submit_s.append(perf_counter() - t)
        outstanding.append(future)
    for future in outstanding:
        future.result()
    wall = perf_counter() - wall
    while len(worker.execute_s) < requests // batch:  # the last batch's bookkeeping ends after its answers
        time.sleep(0.001)
    batches = len(instance.run_s)
    assert batches == requests // batch, (batches, requests, batch)
    run = np.asarray(instance.run_s)
    poll, execute = np.asarray(worker.poll_s), np.asarray(worker.execute_s)
    poll_cpu, execute_cpu = np.asarray(worker.poll_cpu_s), np.asarray(worker.execute_cpu_s)
    worker_s = poll + execute - run
    return {
        "batches": batches,
        "run_us": stats(run)["median"],
        "wall_per_batch_us": us(wall / batches - np.median(run)),
        "requests_per_s": requests / wall,
        "worker_idle": (worker.cond.waited_s - waited) / wall,
        "waits_per_batch": (worker.cond.waits - waits) / batches,
        "submit_us": stats(submit_s), "submit_cpu_us": stats(submit_cpu_s),
        "poll_us": stats(poll), "answer_us": stats(execute - run),
        "worker_us": stats(worker_s), "worker_cpu_us": stats(poll_cpu + execute_cpu - run),
        "submit_per_batch_us": us(np.median(submit_s) * batch),
    }


def sequential_null(runtime: Runtime, instance: NullInstance, requests: int) -> dict[str, float]:
    """One request at a time through a max-batch-1 null runtime: submit to result, less run."""
    rows = torch.ones(1, 4)
    instance.run_s.clear()
    latency = []
    for _ in range(requests):
        t = perf_counter()
        runtime.submit(0, rows).result()
        latency.append(perf_counter() - t)
    return stats(np.asarray(latency) - np.median(instance.run_s))


def submit_vs_depth(batch: int, depth: int) -> dict[str, float]:
    """The submit path against the queue depth: the worker is held inside ``run`` (first batch)
    while ``depth`` more requests queue; then released, and everything drains."""
    runtime, instance = null_runtime(batch)
    gc.collect()
    gc.freeze()
    try:
        instance.gate = threading.Event()
        rows = torch.ones(1, 4)
        first = [runtime.submit(0, rows) for _ in range(batch)]
        if not instance.entered.wait(10):
            raise RuntimeError("the null instance never ran")
        times, futures = [], []
        for _ in range(depth):
            t = perf_counter()
            futures.append(runtime.submit(0, rows))
            times.append(perf_counter() - t)
        instance.gate.set()
        for f in first + futures:
            f.result(timeout=60)
    finally:
        runtime.close()
        gc.unfreeze()
    times = np.asarray(times)
    bins = [(0, 16), (16, 64), (64, 256), (256, depth)]
    return {f"{lo}-{hi}": us(np.median(times[lo:hi])) for lo, hi in bins if hi > lo}


def pieces_in_isolation(reps: int = 20000) -> dict[str, float]:
    """Per-call µs of pieces of the submit and answer paths, one thread, nothing else running."""
    from graft_fx.serving.metrics import Metrics

    m = Metrics(["m.x"], ["group0"])
    spec = runtime_module.FragmentSpec(0, "m.x", (4,), torch.float32, (4,), torch.float32, 1.0)
    rows = torch.ones(1, 4)

    def timed(call) -> float:
        for _ in range(200):
            call()
        t = perf_counter()
        for _ in range(reps):
            call()
        return us((perf_counter() - t) / reps)

    def future_roundtrip():
        f = Future()
        runtime_module._settle(f, rows)
        f.result()

    return {
        "metrics.submitted": timed(lambda: m.submitted("m.x")),
        "metrics.answered": timed(lambda: m.answered("m.x", 0.001, True)),
        "metrics.batch": timed(lambda: m.batch("group0", 8, 0.001)),
        "input check (_problem)": timed(lambda: runtime_module._problem(spec, rows)),
        "Future + settle + result": timed(future_roundtrip),
        "time.monotonic": timed(time.monotonic),
    }


def dispatch_section(args, machine) -> dict[str, Any]:
    requests = {1: 10_000, 8: 40_000, 32: 64_000}
    if args.quick:
        requests = {b: n // 10 for b, n in requests.items()}
    result: dict[str, Any] = {"batches": {}, "requests": requests, "repeats": args.repeats}
    for batch, n in requests.items():
        runtime, instance = null_runtime(batch)
        gc.collect()
        gc.freeze()
        try:
            saturate(runtime, instance, batch, n // 10)  # warm up
            reps = [saturate(runtime, instance, batch, n) for _ in range(args.repeats)]
        finally:
            runtime.close()
            gc.unfreeze()
        flat = [{"wall_per_batch": r["wall_per_batch_us"], "requests_per_s": r["requests_per_s"],
                 "worker_idle": r["worker_idle"], "waits_per_batch": r["waits_per_batch"], "run": r["run_us"],
                 "submit_median": r["submit_us"]["median"], "submit_p99": r["submit_us"]["p99"],
                 "submit_cpu_median": r["submit_cpu_us"]["median"],
                 "submit_per_batch": r["submit_per_batch_us"],
                 "poll_median": r["poll_us"]["median"], "poll_p99": r["poll_us"]["p99"],
                 "answer_median": r["answer_us"]["median"], "answer_p99": r["answer_us"]["p99"],
                 "worker_median": r["worker_us"]["median"], "worker_p99": r["worker_us"]["p99"],
                 "worker_cpu_median": r["worker_cpu_us"]["median"], "worker_cpu_p99": r["worker_cpu_us"]["p99"]}
                for r in reps]
        result["batches"][batch] = {"summary": over_repeats(flat), "repeats": reps}
    runtime, instance = null_runtime(1)
    gc.collect()
    gc.freeze()
    try:
        sequential_null(runtime, instance, 200)
        seq = [sequential_null(runtime, instance, 300 if args.quick else 3000) for _ in range(args.repeats)]
    finally:
        runtime.close()
        gc.unfreeze()
    result["sequential_b1_us"] = {"summary": over_repeats(seq), "repeats": seq}
    depth = 992
    result["submit_vs_depth_us"] = {b: over_repeats([submit_vs_depth(b, depth) for _ in range(args.repeats)])
                                    for b in (1, 8, 32)}
    result["pieces_us"] = over_repeats([pieces_in_isolation(2000 if args.quick else 20000)
                                        for _ in range(args.repeats)])

    header("Dispatch overhead per batch (NullInstance; µs; median over repeats, min-max of repeats)", machine)
    print("Saturating load, one client thread; every batch holds B rows. 'per batch' = wall time of the run / "
          "batches - run; worker = poll + answer (wall, incl. waits for the GIL and the queue lock); "
          "worker CPU = the worker thread's CPU time.\n")
    print("| B | batches/rep | req/s | per batch (wall) | submit/request med | submit p99 | submit x B | "
          "poll med | poll p99 | answer med | answer p99 | worker med | worker p99 | worker CPU med | "
          "worker CPU p99 | worker idle | waits/batch | submit CPU med |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, r in result["batches"].items():
        s = r["summary"]
        print(f"| {batch} | {n_batches(r)} | {fmt(s['requests_per_s'], 0)} | {fmt(s['wall_per_batch'])} | "
              f"{fmt(s['submit_median'])} | {fmt(s['submit_p99'])} | {fmt(s['submit_per_batch'])} | "
              f"{fmt(s['poll_median'])} | {fmt(s['poll_p99'])} | {fmt(s['answer_median'])} | "
              f"{fmt(s['answer_p99'])} | {fmt(s['worker_median'])} | {fmt(s['worker_p99'])} | "
              f"{fmt(s['worker_cpu_median'])} | {fmt(s['worker_cpu_p99'])} | {fmt(s['worker_idle'], 2)} | "
              f"{fmt(s['waits_per_batch'])} | {fmt(s['submit_cpu_median'])} |")
    s = result["sequential_b1_us"]["summary"]
    print(f"\nOne request at a time (B = 1, idle runtime), submit to result less run: median "
          f"{fmt(s['median'])} µs, p99 {fmt(s['p99'])} µs.\n")
    print("Submit path (µs, median per depth range) against the requests already queued, worker held in run:\n")
    bins = list(next(iter(result["submit_vs_depth_us"].values())))
    print("| max batch | " + " | ".join(f"depth {b}" for b in bins) + " |")
    print("|---:|" + "---:|" * len(bins))
    for batch, r in result["submit_vs_depth_us"].items():
        print(f"| {batch} | " + " | ".join(fmt(r[b]) for b in bins) + " |")
    print("\nPieces in isolation (µs per call, one thread):\n")
    print("| piece | µs |")
    print("|---|---:|")
    for k, v in result["pieces_us"].items():
        print(f"| {k} | {fmt(v, 2)} |")
    return result


def n_batches(r: dict[str, Any]) -> int:
    return r["repeats"][0]["batches"]


# ---------------------------------------------------------------------------------------------
# 2. HTTP against the in-process path


def unbatched(profile):
    """``profile``'s p99 table cut at one row: a runtime priced on it starts every request as
    soon as the executor is free (nothing to wait for: a batch is full at one row)."""
    p = profile.planning
    return dataclasses.replace(p, batches=p.batches[:1], latency_s=p.latency_s[:, :, :1], p99_s=None)


def in_process_sequential(runtime: Runtime, fragment: int, x: torch.Tensor, n: int) -> list[float]:
    latency = []
    for _ in range(n):
        t = perf_counter()
        runtime.submit(fragment, x).result()
        latency.append(perf_counter() - t)
    return latency


def closed_loop(session: Callable[[], tuple[Callable[[], Any], Callable[[], Any]]], threads: int,
                seconds: float) -> dict[str, float]:
    """``threads`` closed-loop clients for ``seconds``, each with its own ``session()`` (a call
    that makes one request and waits for its answer, and a close): answers per second within the
    window, counted once every client has made its first (warm-up) request."""
    stop = threading.Event()
    counts = [0] * threads
    start = threading.Barrier(threads + 1)

    def client(i):
        call, close = session()
        call()
        start.wait()
        while not stop.is_set():
            call()
            if not stop.is_set():
                counts[i] += 1
        close()

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = perf_counter() - t0
    for t in pool:
        t.join()
    return {"requests_per_s": sum(counts) / elapsed, "requests": sum(counts)}


def in_process_concurrent(runtime: Runtime, fragment: int, x: torch.Tensor, threads: int,
                          seconds: float) -> dict[str, float]:
    """``threads`` closed-loop in-process clients for ``seconds`` (`closed_loop`)."""
    return closed_loop(lambda: (lambda: runtime.submit(fragment, x).result(), lambda: None), threads, seconds)


def http_client(address: str, model: str, row: list[float], sequential: int, rounds: int, threads: int,
                seconds: float, concurrent_paths: list[str], conn, shipped: str | None = None,
                shipped_requests: int = 0) -> None:
    """Runs in a separate process: the HTTP clients. Sends back, per path, the sequential
    latencies of each round, and the concurrent requests/s. ``shipped``: the address of a plain
    `http.Server` too, which ``shipped_requests`` tritonclient binary requests per round go to."""
    import httpx
    import tritonclient.http as tc

    x = np.asarray(row, dtype=np.float32).reshape(1, -1)
    url = f"http://{address}/v2/models/{model}/infer"
    json_body = json.dumps({"inputs": [{"name": "activation", "datatype": "FP32", "shape": list(x.shape),
                                        "data": x.reshape(-1).tolist()}]}).encode()
    head = json.dumps({"inputs": [{"name": "activation", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    binary_body, binary_headers = head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}

    def triton(binary: bool, at: str = address):
        client = tc.InferenceServerClient(at, network_timeout=60.0)
        inp = tc.InferInput("activation", list(x.shape), "FP32")
        out = [tc.InferRequestedOutput("output", binary_data=binary)]

        def call():
            inp.set_data_from_numpy(x, binary_data=binary)
            return client.infer(model, [inp], outputs=out).as_numpy("output")
        return call, client.close

    def raw(binary: bool):
        client = httpx.Client(timeout=60.0)

        def call():
            if binary:
                r = client.post(url, content=binary_body, headers=binary_headers)
                n = int(r.headers["Inference-Header-Content-Length"])
                return np.frombuffer(r.content[n:], dtype=np.float32)
            r = client.post(url, content=json_body)
            return r.json()["outputs"][0]["data"]
        return call, client.close

    makers = {"tritonclient binary": lambda: triton(True), "tritonclient JSON": lambda: triton(False),
              "httpx binary": lambda: raw(True), "httpx JSON": lambda: raw(False)}
    result: dict[str, Any] = {"sequential": {k: [] for k in makers}, "concurrent": {}}
    clients = {k: make() for k, make in makers.items()}
    counts = {k: sequential for k in makers}
    if shipped and shipped_requests and rounds:
        clients[SHIPPED] = triton(True, shipped)
        counts[SHIPPED] = shipped_requests
        result["sequential"][SHIPPED] = []
    for call, _ in clients.values():  # connect and warm up
        for _ in range(5 if rounds else 0):
            call()
    for _ in range(rounds):
        for k, (call, _) in clients.items():
            latency = []
            for _ in range(counts[k]):
                t = perf_counter()
                call()
                latency.append(perf_counter() - t)
            result["sequential"][k].append(latency)
    for _, close in clients.values():
        close()
    result["sequential"] = {k: v for k, v in result["sequential"].items() if v}
    for k in concurrent_paths:
        result["concurrent"][k] = closed_loop(makers[k], threads, seconds)
    conn.send(result)
    conn.close()


SHIPPED = "tritonclient binary, http.Server as shipped"


class TcpServer:
    """`http.Server` listening on a socket made with ``proto=IPPROTO_TCP``. The shipped one makes
    its socket with proto 0, and asyncio sets TCP_NODELAY only on accepted sockets whose proto is
    IPPROTO_TCP (``asyncio.base_events._set_nodelay``), so its responses (headers, then body)
    wait out the client's delayed ACK: ~40 ms each. ``http.serve`` (uvicorn.run on host and port:
    sockets from getaddrinfo, proto 6) does not have the problem; this is its latency."""

    def __new__(cls, runtime, host: str = "127.0.0.1"):
        import socket

        from graft_fx.serving.http import Server

        server = Server(runtime, host)
        server._sock.close()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, server.port))
        server._sock = sock
        return server


def run_http_client(server, spec, x: torch.Tensor, **options) -> dict[str, Any]:
    """`http_client` in a fresh process (spawned: no fork of a process with threads)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=http_client, args=(server.address, spec.name, x.reshape(-1).tolist()),
                       kwargs={**options, "conn": child})
    proc.start()
    child.close()
    result = parent.recv()
    proc.join(60)
    return result


def mean_batch(runtime: Runtime) -> float:
    registry = runtime.metrics.registry
    total = sum(registry.get_sample_value("graft_batch_size_sum", {"group": f"group{g}"}) or 0.0
                for g in range(len(runtime.plan.groups)))
    count = sum(registry.get_sample_value("graft_batch_size_count", {"group": f"group{g}"}) or 0.0
                for g in range(len(runtime.plan.groups)))
    return total / count if count else math.nan


def http_section(args, machine) -> dict[str, Any]:
    from graft_fx.serving.http import Server
    from tests.serving.fixtures import small_runtime, tiny_model, tiny_profile

    n = 200 if args.quick else 2000
    seconds = 1.0 if args.quick else args.http_seconds
    threads = 8
    fragment = 0
    x = torch.randn(1, *tiny_model()[1].shape[1:], generator=torch.Generator().manual_seed(0))
    result: dict[str, Any] = {"fragment": fragment, "sequential_requests": n, "rounds": args.repeats,
                              "threads": threads, "seconds": seconds}

    # Sequential and concurrent on the unbatched runtime.
    runtime = small_runtime(budget_s=1.0, pricing=unbatched(tiny_profile()))
    gc.collect()
    gc.freeze()
    try:
        spec = runtime.spec(fragment)
        instance = runtime.instances[0]
        model_s = []
        with torch.inference_mode():
            for _ in range(n):
                t = perf_counter()
                instance.run([fragment], [x])
                model_s.append(perf_counter() - t)
        in_process_sequential(runtime, fragment, x, 200)
        sequential = {"in-process submit().result()": [in_process_sequential(runtime, fragment, x, n)
                                                        for _ in range(args.repeats)]}
        concurrent = {"in-process": in_process_concurrent(runtime, fragment, x, threads, seconds)}
        with TcpServer(runtime) as server, Server(runtime) as shipped:
            client = run_http_client(server, spec, x, sequential=n, rounds=args.repeats, threads=threads,
                                     seconds=seconds, concurrent_paths=["tritonclient binary", "httpx binary"],
                                     shipped=shipped.address, shipped_requests=max(20, n // 20))
        sequential.update(client["sequential"])
        concurrent.update(client["concurrent"])
        unbatched_mean = mean_batch(runtime)
    finally:
        runtime.close()
        gc.unfreeze()
    result["model_run_ms"] = stats(model_s, 1e3)
    result["sequential_ms"] = {k: {"pooled": stats(np.concatenate(rounds), 1e3),
                                   "rounds": [stats(r, 1e3) for r in rounds]}
                               for k, rounds in sequential.items()}
    result["concurrent_unbatched"] = {"paths": concurrent, "mean_batch": unbatched_mean}

    # Concurrent on the batching runtime (max batch 8): 8 clients fill every batch.
    runtime = small_runtime(budget_s=0.25)
    gc.collect()
    gc.freeze()
    try:
        spec = runtime.spec(fragment)
        concurrent = {"in-process": in_process_concurrent(runtime, fragment, x, threads, seconds)}
        with TcpServer(runtime) as server:
            client = run_http_client(server, spec, x, sequential=0, rounds=0, threads=threads, seconds=seconds,
                                     concurrent_paths=["tritonclient binary", "httpx binary"])
        concurrent.update(client["concurrent"])
        batched_mean = mean_batch(runtime)
    finally:
        runtime.close()
        gc.unfreeze()
    result["concurrent_batched"] = {"paths": concurrent, "mean_batch": batched_mean}

    header("HTTP round trip against the in-process path (tiny MLP, fragment 0; ms)", machine)
    base = result["sequential_ms"]["in-process submit().result()"]["pooled"]["median"]
    print(f"Sequential, one request in flight, {n} requests x {args.repeats} rounds per path ({max(20, n // 20)} "
          f"for the shipped http.Server); the model's own run: median {result['model_run_ms']['median']:.3f} ms. "
          "HTTP paths go to `TcpServer` (http.Server on a proto-TCP socket) unless said. Spread = min-max of the "
          "rounds' medians.\n")
    print("| path | median | p99 | round medians | overhead vs in-process (median) |")
    print("|---|---:|---:|---:|---:|")
    for k, r in result["sequential_ms"].items():
        meds = [x["median"] for x in r["rounds"]]
        print(f"| {k} | {r['pooled']['median']:.3f} | {r['pooled']['p99']:.3f} | {min(meds):.3f}-{max(meds):.3f} | "
              f"{r['pooled']['median'] - base:+.3f} |")
    print(f"\n{threads} closed-loop client threads for {seconds:.0f} s (requests/s; HTTP clients in another process):\n")
    print("| runtime | in-process | tritonclient binary | httpx binary | mean batch |")
    print("|---|---:|---:|---:|---:|")
    for label, key in (("unbatched (max batch 1)", "concurrent_unbatched"),
                       ("batching (max batch 8, 0.25 s budget)", "concurrent_batched")):
        p = result[key]["paths"]
        print(f"| {label} | {p['in-process']['requests_per_s']:.0f} | {p['tritonclient binary']['requests_per_s']:.0f} | "
              f"{p['httpx binary']['requests_per_s']:.0f} | {result[key]['mean_batch']:.2f} |")
    return result


# ---------------------------------------------------------------------------------------------
# 3. Throughput at SLO


def poisson_stream(rate: float, seconds: float, fragments: list[int], budget_s: float, seed: int):
    from graft_fx.serving.requests import Request
    from graft_fx.serving.stream import Stream

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10))
    arrivals = arrivals[arrivals < seconds]
    types = rng.choice(fragments, len(arrivals))
    requests = tuple(Request(float(t + budget_s), float(t), i, int(f))
                     for i, (t, f) in enumerate(zip(arrivals.tolist(), types.tolist())))
    return Stream(requests, arrivals, np.ones(len(arrivals), dtype=bool), seconds)


def describe_plan(plan) -> str:
    groups = "; ".join(f"{list(g.fragments)} x{g.replicas} @ {plan.describe(g.share)}" for g in plan.groups)
    return f"{groups} (total share {plan.total_share:.2f})"


def scaled(profile, factor: float):
    """``profile`` with every latency (median and p99) ``factor`` times as long."""
    return dataclasses.replace(profile, latency_s=profile.latency_s * factor,
                               p99_s=None if profile.p99_s is None else profile.p99_s * factor,
                               source=f"{profile.source}, latencies x{factor:g}")


def record_batches(runtime: Runtime) -> list[tuple[int, int, float]]:
    """(group, rows, seconds) of every batch the runtime executes, from its metrics call."""
    executed: list[tuple[int, int, float]] = []
    metrics, plain = runtime.metrics, runtime.metrics.batch

    def batch(group: str, size: int, seconds: float) -> None:
        executed.append((int(group.removeprefix("group")), size, seconds))
        plain(group, size, seconds)

    metrics.batch = batch
    return executed


def against_price(executed, the_plan, profile) -> dict[str, Any]:
    """How long batches took against what the queues priced them at (the p99 profile, without
    `OVERHEAD_S`), for groups of one fragment type (a mix's price depends on the mix): the median
    and p90 of measured / priced, over batches."""
    ratios = [seconds / profile.planning.fragment_s(the_plan.groups[g].fragments[0], size, the_plan.groups[g].share)
              for g, size, seconds in executed if len(the_plan.groups[g].fragments) == 1]
    if not ratios:
        return {"batch_vs_price_median": None, "batch_vs_price_p90": None, "batches": len(executed)}
    return {"batch_vs_price_median": float(np.median(ratios)), "batch_vs_price_p90": float(np.percentile(ratios, 90)),
            "batches": len(executed)}


def slo_model(name: str, args) -> dict[str, Any]:
    from tqdm import tqdm

    from graft_fx.serving import profile_cache, zoo
    from graft_fx.serving.deployment import deploy
    from graft_fx.serving.instances import build
    from graft_fx.serving.loadgen import replay
    from graft_fx.serving.partitions import for_device
    from graft_fx.serving.planner import Demand, fluid_bound, plan

    model, example = zoo.build(name)
    t = perf_counter()
    with tqdm(desc=f"profile of {name} on this CPU", unit="cell", leave=False) as bar:
        profile = profile_cache.measured_here(name, model, example, progress=bar)
    profile_s = perf_counter() - t
    measured_profile = profile
    if args.price_scale != 1.0:
        profile = scaled(profile, args.price_scale)
    fragments = args.fragments or [len(profile.fragments) // 2]
    budget_s = (args.budget_ms or BUDGETS_MS.get(name, 500.0)) / 1e3
    capacity = 1.0 / fluid_bound(profile, {f: 1.0 / len(fragments) for f in fragments})
    partitioning = for_device(profile.device)
    seconds = 3.0 if args.quick else args.seconds
    fractions = FRACTIONS[2:5] if args.quick else FRACTIONS
    out: dict[str, Any] = {
        "model": name, "profile": measured_profile.label, "profile_s": profile_s, "price_scale": args.price_scale,
        "fragments": {f: profile.fragments[f] for f in fragments}, "budget_ms": budget_s * 1e3,
        "fluid_capacity_rps": capacity, "seconds_per_rate": seconds, "rates": [], "stopped": None}
    instances: dict[tuple, list] = {}
    for i, fraction in enumerate(fractions):
        rate = fraction * capacity
        try:
            the_plan = plan(profile, [Demand(f, rate / len(fragments), budget_s) for f in fragments],
                            realign=True, partitioning=partitioning)
        except GraftError as e:
            out["stopped"] = f"{rate:.1f} req/s: the planner finds no plan: {e}"
            break
        cpus = deploy(the_plan, profile).gpus
        if cpus > 1:
            out["stopped"] = (f"{rate:.1f} req/s: the plan ({describe_plan(the_plan)}) needs {cpus} CPUs like "
                              "this one; the runtime drives one")
            break
        key = tuple(tuple(g.fragments) for g in the_plan.groups)
        if key not in instances:
            instances[key] = build(model, example, profile, the_plan, verify=not instances)
        runtime = Runtime(the_plan, profile, instances[key])
        executed = record_batches(runtime)
        gc.collect()
        gc.freeze()
        try:
            stream = poisson_stream(rate, seconds, fragments, budget_s, seed=args.seed + i)
            measured = replay(runtime, stream)
            batch = mean_batch(runtime)
        finally:
            runtime.close()
            gc.unfreeze()
        requests = stream.requests
        on_time = measured.on_time(stream)
        answered = ~np.isnan(measured.finish_s)
        latency = measured.finish_s[answered] - stream.send_s[answered]
        row = {"offered_rps": len(requests) / seconds, "planned_rps": rate, "fraction_of_fluid": fraction,
               "requests": len(requests), "goodput_rps": float(on_time.sum()) / seconds,
               "attainment": float(on_time.mean()) if len(requests) else 1.0,
               "answered": int(answered.sum()), "late_answers": int(answered.sum() - on_time.sum()),
               "rejected": dict(sorted(measured.reasons.items())),
               "p50_ms": float(np.percentile(latency, 50) * 1e3) if len(latency) else None,
               "p99_ms": float(np.percentile(latency, 99) * 1e3) if len(latency) else None,
               "mean_batch": batch, "late_submits": measured.late_submits, "wall_s": measured.wall_s,
               **against_price(executed, the_plan, profile),
               "plan": describe_plan(the_plan), "partitions": len(the_plan.partitions)}
        out["rates"].append(row)
        print(f"  {name} {row['offered_rps']:.1f} req/s: attainment {row['attainment']:.4f}, goodput "
              f"{row['goodput_rps']:.1f}, {row['rejected']}, batch/price {ratio(row)}; {row['plan']}", flush=True)
        if row["attainment"] < 0.5:
            out["stopped"] = f"{row['offered_rps']:.1f} req/s: attainment below 50%"
            break
    meeting = [r["offered_rps"] for r in out["rates"] if r["attainment"] >= 0.99]
    out["throughput_at_slo_rps"] = max(meeting) if meeting else None
    return out


def ratio(row: dict[str, Any]) -> str:
    if row["batch_vs_price_median"] is None:
        return "-"
    return f"{row['batch_vs_price_median']:.2f}, {row['batch_vs_price_p90']:.2f}"


def slo_section(args, machine) -> dict[str, Any]:
    result = {}
    for name in args.models:
        r = slo_model(name, args)
        scale = "" if args.price_scale == 1.0 else f", profile latencies x{args.price_scale:g}"
        result[name + scale] = r
        header(f"Throughput at SLO: {name}, fragment(s) {r['fragments']}, budget {r['budget_ms']:.0f} ms{scale}",
               machine)
        print(f"profile: {r['profile']} ({r['profile_s']:.0f} s to load or measure); fluid capacity "
              f"{r['fluid_capacity_rps']:.1f} req/s; {r['seconds_per_rate']:.0f} s of Poisson arrivals per rate.\n")
        print("| offered req/s | goodput req/s | attainment | rejected | late answers | p50 ms | p99 ms | "
              "mean batch | batch time / price (median, p90) | late submits | plan |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for row in r["rates"]:
            rejected = ", ".join(f"{k} {v}" for k, v in row["rejected"].items()) or "-"
            p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
            p99 = f"{row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
            print(f"| {row['offered_rps']:.1f} | {row['goodput_rps']:.1f} | {row['attainment']:.4f} | {rejected} | "
                  f"{row['late_answers']} | {p50} | {p99} | {row['mean_batch']:.2f} | {ratio(row)} | {row['late_submits']} | "
                  f"{row['plan']} |")
        slo = r["throughput_at_slo_rps"]
        print(f"\nthroughput at SLO (attainment >= 99%): {f'{slo:.1f} req/s' if slo else 'none of the rates'}"
              + (f"; stopped at {r['stopped']}" if r["stopped"] else ""))
    return result


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", nargs="+", choices=("dispatch", "http", "slo"),
                        default=["dispatch", "http", "slo"])
    parser.add_argument("--repeats", type=int, default=5, help="repeats (dispatch) or rounds (http)")
    parser.add_argument("--http-seconds", type=float, default=5.0, help="length of each concurrent HTTP run")
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--fragments", type=int, nargs="+", default=None,
                        help="fragment types of the SLO sweep (default: the middle cut), rate split evenly")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="server budget of the SLO sweep (default: 500 resnet50, 200 mobilenet_v2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of arrivals per rate (slo)")
    parser.add_argument("--price-scale", type=float, default=1.0,
                        help="plan and price on the CPU profile with every latency times this (slo): a profile "
                             "calibrated to what batches take in the runtime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="every section, briefly")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / f"runtime_{datetime.date.today().isoformat()}.json")
    args = parser.parse_args()

    machine = describe("cpu")
    print("machine:", json.dumps(machine))
    doc: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    doc["machine"] = machine
    runs = doc.setdefault("runs", [])
    started = perf_counter()
    at = datetime.datetime.now().isoformat(timespec="seconds")
    sections = {"dispatch": dispatch_section, "http": http_section, "slo": slo_section}
    for name in ("dispatch", "http", "slo"):  # every run of a section is kept: repeat runs show the noise
        if name not in args.section:
            continue
        t = perf_counter()
        result = sections[name](args, machine)
        if name == "slo":
            for key, sweep in result.items():
                doc.setdefault("slo", {}).setdefault(key, []).append({**sweep, "at": at, "machine": machine})
        else:
            doc.setdefault(name, []).append({**result, "seconds": perf_counter() - t, "at": at, "machine": machine})
    runs.append({"argv": sys.argv[1:], "seconds": perf_counter() - started, "at": at})
    if not args.quick:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str))
        print(f"\nwrote {args.json}")
    print(f"total {perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
