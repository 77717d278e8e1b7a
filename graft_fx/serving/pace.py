"""Pace: how much slower than priced a partition's batches run now, learned from those it ran.

The queues price a batch from the latency profile (its p99 on the measuring host, `Profile.planning`),
and the runtime's margins (`runtime.LEAD_FRACTION`) absorb a batch that runs up to a quarter
over that price. A host whose speed drifts further for seconds at a time (a shared VM: the
development host ran a resnet18 batch at 155 ms and at 250 ms within one minute, without a
sign in its steal time) makes every batch of those seconds late: the queues start batches too
late for their deadlines and admit requests that the slow executor cannot serve, and the
lateness cascades from batch to batch.

So each partition learns its pace from the batches it runs, after Clockwork (Gujarati et al.,
"Serving DNNs like Clockwork", OSDI 2020), whose controller predicts execution times from a
rolling window of recent measurements: the *ratio* of a batch's measured time to its price is
recorded, and the pace is the median of the last `WINDOW` ratios, clamped to
``[1, MAX_PACE]``. The queues price every batch ``pace`` times dearer (`BatchQueue.reprice`), so
a slow host starts batches earlier and refuses at the door what it cannot serve, instead of
answering everyone late.

- The median of five follows a slowdown that lasts three batches and ignores a single stall (a
  garbage collection, a page fault), which a maximum would turn into five batches of refusals.
- The pace never goes below 1: the price is a p99, so batches usually run faster than priced,
  and a run of fast batches is no promise that the next one is; the plan's own headroom is kept.
- The cap stops one pathological window (a host suspended for a second under a 1 ms batch) from
  pricing the partition out of every request; a host more than `MAX_PACE` times slower than
  profiled needs a new profile, not a factor.
"""

from __future__ import annotations

import collections
import statistics

import numpy as np

WINDOW = 5  # batches the pace is the median of
MAX_PACE = 4.0  # the pace's ceiling: a factor, not a re-profiling
HISTORY = 10_000  # ratios kept for `Pace.summary` (the most recent)
SETTLE = 0.05  # a relative change below this leaves the pace (and the queues' prices) as they are


class Pace:
    """The pace of one partition; not thread-safe (its worker updates it under its own lock).

    ``factor`` starts at 1: the profile's price, as calibrated at start. `observe` records one batch.
    """

    def __init__(self) -> None:
        self.factor = 1.0
        # the calibrated profile is the prior: the window starts as WINDOW batches right on price
        self._window: collections.deque[float] = collections.deque([1.0] * WINDOW, maxlen=WINDOW)
        self._history: collections.deque[float] = collections.deque(maxlen=HISTORY)

    def observe(self, measured_s: float, priced_s: float) -> bool:
        """Record a batch that took ``measured_s`` seconds against a price (at pace 1) of
        ``priced_s``; True when the factor changed (the caller reprices its queues)."""
        if not (priced_s > 0 and measured_s >= 0):
            return False
        ratio = measured_s / priced_s
        self._window.append(ratio)
        self._history.append(ratio)
        factor = min(max(statistics.median(self._window), 1.0), MAX_PACE)
        if abs(factor - self.factor) <= SETTLE * self.factor:
            return False
        self.factor = factor
        return True

    def summary(self) -> dict[str, float | int]:
        """The recorded ratios of measured to priced batch time (the most recent `HISTORY`):
        ``batches``, and their median, 90th percentile and maximum (None without batches)."""
        if not self._history:
            return {"batches": 0, "p50": None, "p90": None, "max": None}
        ratios = np.fromiter(self._history, float)
        return {"batches": len(ratios), "p50": float(np.median(ratios)), "p90": float(np.quantile(ratios, 0.9)),
                "max": float(ratios.max())}
