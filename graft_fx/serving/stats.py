"""Figures over seeds: the median and a distribution-free confidence interval for it.

A simulated share depends on the seed (which phones, which trace offsets, which arrivals), so a
reported figure is the median over several seeds with an interval. The interval is the classical
order-statistic one for a median (e.g. Conover, *Practical Nonparametric Statistics*, 3rd ed.,
section 3.2): with ``n`` values sorted, ``[x_(k), x_(n+1-k)]`` covers the true median with
probability ``1 - 2 P(Binomial(n, 1/2) < k)``, whatever the distribution; ``k`` is the largest
that keeps the coverage at least the one asked for, or 1 (the range) when ``n`` is too small to
reach it, and the coverage actually achieved is reported with it: 93.8% for 5 seeds (the range),
97.9% for 10 (second smallest to second largest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import GraftError


@dataclass(frozen=True)
class Median:
    """``value``, the median of ``n`` values, and ``[low, high]`` covering the true median with
    probability ``coverage``."""

    value: float
    low: float
    high: float
    coverage: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"

    def to_json(self) -> dict[str, float]:
        return {"median": self.value, "low": self.low, "high": self.high, "coverage": self.coverage, "n": self.n}


def median_ci(values: Sequence[float], confidence: float = 0.95) -> Median:
    """The median of ``values`` and its order-statistic confidence interval (see the module
    docstring). Raises GraftError for no values or a confidence outside (0, 1)."""
    if len(values) == 0:
        raise GraftError("median of no values: expected at least one")
    if not 0 < confidence < 1:
        raise GraftError(f"confidence {confidence}: expected a fraction in (0, 1)")
    x, n = sorted(float(v) for v in values), len(values)
    mid = x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2
    k = 1
    while k + 1 <= n // 2 and _coverage(n, k + 1) >= confidence:
        k += 1
    return Median(mid, x[k - 1], x[n - k], _coverage(n, k), n)


def _coverage(n: int, k: int) -> float:
    """P(x_(k) <= median <= x_(n+1-k)) = 1 - 2 P(Binomial(n, 1/2) < k)."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
