"""How fast phones run a model's head: four device classes, and a continuum fitted to them.

A `DeviceClass` is one phone's compute: an effective sustained rate in GFLOP/s and a fixed
per-inference overhead (framework dispatch, copying the input, waking an accelerator). `DEVICES`
holds four presets, from an entry-level phone's CPU to a flagship's NPU. `LogNormalSpeeds` is a
population of phones instead: each phone's rate is drawn from a log-normal distribution, and
`PHONE_SPEEDS` is the one whose 10th, 50th and 90th percentiles match the entry-level, mid-range
and high-end presets (`LogNormalSpeeds.fit`).

Where the presets come from (effective fp32 rates, FLOPs = 2 x multiply-adds; all approximate):

- Sandler et al., "MobileNetV2", CVPR 2018, Table 4: MobileNetV2 (300 M multiply-adds, 0.6 GFLOP)
  runs in 75 ms on one large core of a Google Pixel 1 with TF-Lite: 8 GFLOP/s. An entry-level
  phone of today (in-order Cortex-A53/A55-class cores) sustains about that or less: 5 GFLOP/s.
- github.com/freedomtan/glDelegateBenchmark (README, TF-Lite, 2019-2020): MobileNet-V1 1.0 224
  (569 M multiply-adds, 1.14 GFLOP) in 40.6 ms on one CPU thread of an iPhone 7 (28 GFLOP/s),
  16.0 ms on its GPU (71 GFLOP/s); on an iPhone 11 Pro 18.2 ms on two CPU threads (63 GFLOP/s),
  10.9 ms on the GPU (104 GFLOP/s) and 2.03 ms through Core ML on the Neural Engine
  (560 GFLOP/s). MobileNet-V1 is an unusually efficient model per FLOP, so the presets sit below
  these: 20 GFLOP/s for a mid-range phone's big cores, 100 for a flagship's GPU, 300 for an NPU.

The presets are assumptions to sweep, not measurements. Which percentile of the phones in use each
preset stands for is an assumption too (no public census of phones' sustained ML throughput).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ..errors import GraftError


@dataclass(frozen=True)
class DeviceClass:
    """A phone's compute: ``gflops`` effective sustained GFLOP/s and a per-inference overhead.

    Raises GraftError unless ``gflops > 0`` and ``overhead_ms >= 0``.
    """

    name: str
    gflops: float
    overhead_ms: float

    def __post_init__(self):
        if not (self.gflops > 0 and self.overhead_ms >= 0):
            raise GraftError(f"device {self.name!r}: expected gflops > 0 and overhead_ms >= 0, "
                             f"got {self.gflops} and {self.overhead_ms}")

    def head_s(self, flops: float) -> float:
        """Seconds to run a head of ``flops`` FLOPs; an empty head (no FLOPs) costs nothing."""
        return self.overhead_ms / 1e3 + flops / (self.gflops * 1e9) if flops > 0 else 0.0


# Overheads are a few ms: framework dispatch and the input copy on a CPU, plus driver dispatch and
# synchronisation on an accelerator. Rates: see the module docstring.
DEVICES = {
    # Entry-level phone: in-order Cortex-A53/A55-class cores, fp32 NEON kernels.
    "low-end": DeviceClass("low-end", gflops=5.0, overhead_ms=4.0),
    # Mid-range phone: a few out-of-order Cortex-A7x-class big cores, an optimised CPU backend.
    "mid-range": DeviceClass("mid-range", gflops=20.0, overhead_ms=2.0),
    # Flagship phone running the model on its GPU through a delegate (fp16 arithmetic inside).
    "high-end": DeviceClass("high-end", gflops=100.0, overhead_ms=3.0),
    # Recent flagship running the model on its NPU (reduced precision inside).
    "flagship-npu": DeviceClass("flagship-npu", gflops=300.0, overhead_ms=3.0),
}


@dataclass(frozen=True)
class LogNormalSpeeds:
    """A population of phones whose effective rate is log-normal: ``ln(GFLOP/s)`` is normal with
    mean ``ln(median_gflops)`` and standard deviation ``sigma``; every phone has the same overhead.

    Raises GraftError unless ``median_gflops > 0``, ``sigma >= 0`` and ``overhead_ms >= 0``.
    """

    median_gflops: float
    sigma: float
    overhead_ms: float

    def __post_init__(self):
        if not (0 < self.median_gflops < math.inf and 0 <= self.sigma < math.inf and self.overhead_ms >= 0):
            raise GraftError(f"log-normal phone speeds: expected median_gflops > 0, sigma >= 0 and "
                             f"overhead_ms >= 0, got {self.median_gflops}, {self.sigma} and {self.overhead_ms}")

    @classmethod
    def fit(cls, quantiles: Mapping[float, float], overhead_ms: float) -> LogNormalSpeeds:
        """The log-normal whose quantiles best match ``quantiles`` (probability -> GFLOP/s):
        least squares of ``ln(GFLOP/s)`` on the standard normal quantile of each probability.

        Raises GraftError unless there are two or more distinct probabilities in (0, 1) and every
        rate is positive.
        """
        if len(quantiles) < 2 or not all(0 < p < 1 and g > 0 for p, g in quantiles.items()):
            raise GraftError(f"quantiles {dict(quantiles)}: expected two or more probabilities in (0, 1), "
                             f"each with a positive GFLOP/s")
        z = np.array([NormalDist().inv_cdf(p) for p in quantiles])
        y = np.log(np.array(list(quantiles.values()), dtype=float))
        sigma = float(np.sum((z - z.mean()) * (y - y.mean())) / np.sum((z - z.mean()) ** 2))
        return cls(float(np.exp(y.mean() - sigma * z.mean())), sigma, overhead_ms)

    def gflops_at(self, p: float) -> float:
        """The rate in GFLOP/s that a fraction ``p`` of the phones fall below (0 < p < 1)."""
        return self.median_gflops * math.exp(self.sigma * NormalDist().inv_cdf(p))

    def draw(self, rng: np.random.Generator, n: int) -> list[DeviceClass]:
        """``n`` phones drawn independently from the population."""
        rates = rng.lognormal(math.log(self.median_gflops), self.sigma, n)
        return [DeviceClass(f"{g:.3g} GFLOP/s", float(g), self.overhead_ms) for g in rates]


# The fit: median 21.5 GFLOP/s, sigma 1.17; its 10th/50th/90th percentiles are 4.8, 21.5 and
# 96 GFLOP/s against the presets' 5, 20 and 100, and the NPU preset's 300 sits at the 98.8th. The
# overhead is the presets' middle value.
PHONE_SPEEDS = LogNormalSpeeds.fit({0.1: DEVICES["low-end"].gflops, 0.5: DEVICES["mid-range"].gflops,
                                    0.9: DEVICES["high-end"].gflops}, overhead_ms=3.0)
