"""Replaying a request stream through a `runtime.Runtime` on the wall clock.

The stream is the one the simulator replays (`stream.make_stream`: phones, their cuts, their
uploads over a network trace), so the runtime's measured figures and the simulator's predicted
ones are about the same requests. One thread sleeps until each request's arrival (``t0 +
arrival_s``, the phone's head and upload having taken their simulated time) and submits it with
its deadline (``t0 + deadline_s``); each request carries a fixed random activation of its
fragment type, since the server's work does not depend on the values. A request's end-to-end
latency runs from its phone starting (``t0 + send_s``) to its answer, as in the simulator.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .runtime import Rejected, Runtime
from .stream import Stream


@dataclass(frozen=True)
class Measured:
    """What a replay measured: ``finish_s[i]`` is when request i was answered with an output, on
    the stream's clock (NaN if it was rejected); ``reasons`` counts rejections by reason;
    ``late_submits`` counts requests submitted more than a millisecond after their arrival (the
    load generator falling behind); ``wall_s`` is the replay's length."""

    finish_s: np.ndarray
    reasons: Counter[str] = field(default_factory=Counter)
    late_submits: int = 0
    wall_s: float = 0.0

    def on_time(self, stream: Stream) -> np.ndarray:
        return ~np.isnan(self.finish_s) & (self.finish_s <= stream.deadline_s)

    def summary(self, stream: Stream) -> dict:
        """``requests``, ``completed`` (answered with an output), ``rejected``, ``slo_attainment``
        (on time over all requests), ``p50_ms`` and ``p99_ms`` (end-to-end, answered requests),
        and the rejections by reason."""
        answered = ~np.isnan(self.finish_s)
        latency_ms = (self.finish_s[answered] - stream.send_s[answered]) * 1e3
        n = len(stream.requests)
        p50, p99 = (float(np.percentile(latency_ms, q)) for q in (50, 99)) if answered.any() else (None, None)
        return {"requests": n, "completed": int(answered.sum()), "rejected": int(n - answered.sum()),
                "slo_attainment": float(self.on_time(stream).mean()) if n else 1.0, "p50_ms": p50, "p99_ms": p99,
                "rejected_by_reason": dict(sorted(self.reasons.items())), "late_submits": self.late_submits}


def replay(runtime: Runtime, stream: Stream, progress: Callable[[int], None] | None = None,
           seed: int = 0) -> Measured:
    """Submit every request of ``stream`` to ``runtime`` at its arrival time and wait for every
    answer. ``progress`` is told the number of requests answered as they are (a tqdm ``update``).
    Raises GraftError if the stream has a fragment type the runtime does not serve."""
    generator = torch.Generator().manual_seed(seed)
    rows = {}
    for f in sorted(set(stream.fragment.tolist())):
        spec = runtime.spec(f)
        rows[f] = (torch.randn((1, *spec.row_shape), generator=generator).to(spec.dtype)
                   if spec.dtype.is_floating_point else torch.zeros((1, *spec.row_shape), dtype=spec.dtype))
    n = len(stream.requests)
    finish = np.full(n, np.nan)
    reasons: Counter[str] = Counter()
    left = threading.Semaphore(0)
    lock = threading.Lock()

    def answered(i: int, t0: float):
        def done(future):
            t = runtime.clock() - t0
            error = future.exception()
            with lock:
                if error is None:
                    finish[i] = t
                else:
                    reasons[error.reason if isinstance(error, Rejected) else type(error).__name__] += 1
            if progress:
                progress(1)
            left.release()
        return done

    order = np.argsort(stream.arrival_s, kind="stable")
    late = 0
    t0 = runtime.clock()
    for i in order:
        r = stream.requests[i]
        wait = t0 + r.arrival_s - runtime.clock()
        if wait > 0:
            time.sleep(wait)
        elif wait < -1e-3:
            late += 1
        runtime.submit(r.fragment, rows[r.fragment], t0 + r.deadline_s).add_done_callback(answered(int(i), t0))
    for _ in range(n):
        left.acquire()
    return Measured(finish, reasons, late, runtime.clock() - t0)
