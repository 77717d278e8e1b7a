"""Modelled latency profiles: a roofline per layer, launch costs per kernel, fitted to measurements.

Where no GPU is at hand, the planner still needs latency against batch size and share. This
module predicts it from each layer's work (`graft_fx.serving.pieces.LayerCost`) and a few numbers
about an accelerator (`Accelerator`); profiles made this way say so in their ``source``.

**One layer** with ``F`` FLOPs per row, ``W`` weight bytes and ``A`` activation bytes per row
(read plus written), ``n`` kernels, at batch ``b`` on a share ``s`` of the accelerator, keeps the
device busy for::

    device = max(F b / (C s e),  (W + A b) / (M e_m bw(s)))  +  n d        bw(s) = min(1, k s)

``C`` is the peak rate for the layer's kind (convolutions and matrix products have their own, see
the presets), ``e`` the fraction of it that large eager kernels reach, ``M e_m`` the bandwidth
they reach. Compute scales with the share. Bandwidth need not: partitions of SMs (green contexts,
MPS) do not isolate the memory system, so a partition may draw more than its share of it, all of
it from a fraction ``1 / k`` of the SMs. What a partition draws is bounded by the loads its SMs
keep in flight, though, and on the H200 measurements the fit puts ``k`` at 1.0 (eager fp32
kernels draw bandwidth in proportion to their SMs); ``k`` stays a parameter for kernels and chips
that saturate memory from fewer SMs. ``d`` is each kernel's floor: a kernel with little work
cannot fill the SMs (few thread blocks, a ragged last wave) and still takes its time (the Hockney
form ``t = d + work / rate``, which is what a saturating efficiency ``work / (work + w0)``
amounts to). Ops with no counted FLOPs (norms, activations, pooling, additions) are pure memory
traffic.

**Launch costs.** Eager PyTorch spends host time on every op: ``K`` per kernel and ``L`` more for
each convolution or matrix product (cuDNN and cuBLAS choose algorithms and build descriptors on
the host), plus ``P`` once per piece (the GraphModule call). On a GPU the host issues kernels
while the device runs earlier ones, so a piece is a two-stage pipeline: layer ``j`` is issued at
host time ``H_j = P + sum of host costs up to j`` and the device finishes at
``D = max_j (H_j + sum_{l >= j} device_l)``. At small batches ``D`` is the host time (flat in
batch, blind to the share: launch-bound, as the H200 measurements are up to 16 to 32 rows); at
large ones, the device time (linear in batch). On a CPU the same cores do both, so the costs add:
``P + sum (host_l + device_l)`` (``overlap=False``), the per-layer form
``max(compute, memory) + launch`` summed.

**Presets** (`ACCELERATORS`) describe fp32 eager PyTorch with its default settings, the setting
of the shipped H200 profile: convolutions run on TF32 tensor cores (``torch.backends.cudnn.
allow_tf32`` is on by default), matrix products in full fp32 on the CUDA cores
(``torch.backends.cuda.matmul.allow_tf32`` is off by default). The peaks are the vendors' dense
figures for those units:

=========  =====  ==============  ===============  ===============================
preset     SMs    conv (TF32)     matmul (FP32)    memory
=========  =====  ==============  ===============  ===============================
h200       132    494 TFLOP/s     67 TFLOP/s       4.8 TB/s HBM3e
a100       108    156 TFLOP/s     19.5 TFLOP/s     2.04 TB/s (80GB SXM; a100-40gb: 1.555 TB/s)
t4         40     8.1 (no TF32)   8.1 TFLOP/s      320 GB/s GDDR6
=========  =====  ==============  ===============  ===============================

The efficiencies, the bandwidth scale and the launch costs (`FREE`) were fitted to the shipped
H200 profile (all five models, every share and batch size) and rounded: what fp32 eager kernels
reach of those peaks (convolutions 0.49 of TF32, about 240 TFLOP/s, below the roughly 80% of
peak that tuned bf16 GEMMs reach on an H200, 790 of 989 TFLOP/s; matrix products 0.64 of FP32,
43 TFLOP/s; memory 0.84, 4.0 TB/s, against 4.3 TB/s measured by a streaming benchmark) and what
eager PyTorch costs on a server's host (12 us per kernel, 65 us more per cuDNN or cuBLAS call,
22 us device floor per kernel, 17 us per piece). They are carried over to the A100 and the T4,
whose software and host side are the same; the T4 has no TF32, so its convolutions run on the
FP32 units at the matrix products' efficiency. The "cpu" form (one core, ``torch.
set_num_threads(1)``, at a nominal AVX2 peak of 32 FLOP per cycle at about 3 GHz) is a starting
point for `fit` on a CPU's measurements; scale its rates for more threads.

**Calibration** (`fit`): least squares on log latency of fragments (a fragment is pieces ``f``
to the end, what a request costs), over the free parameters in log space, by Levenberg-Marquardt
with numerical derivatives and a weak pull towards the starting values (so that parameters the
data cannot see, such as the bandwidth scale without partial shares, stay where they were).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GraftError
from .pieces import LayerCost, select
from .profiles import PRECISIONS, Piece, Profile


@dataclass(frozen=True)
class Accelerator:
    """What the roofline needs to know about one accelerator; see the module docstring.

    Rates are FLOP/s and B/s, times seconds. ``units`` is the number of SMs (cores for a CPU);
    ``shares`` the unit counts a modelled profile is tabulated at by default. The defaults of the
    fitted parameters are the H200 fit (see the module docstring), which suits any GPU driven by
    fp32 eager PyTorch from a server's host.
    """

    name: str
    description: str
    units: int
    conv_flops: float
    matmul_flops: float
    bandwidth: float
    conv_eff: float = 0.49
    matmul_eff: float = 0.64
    bw_eff: float = 0.84
    bw_scale: float = 1.0
    launch_s: float = 12e-6
    library_s: float = 65e-6
    kernel_s: float = 22e-6
    piece_s: float = 17e-6
    overlap: bool = True
    shares: tuple[int, ...] = ()

    def __post_init__(self):
        for f in FREE:
            v = getattr(self, f)
            if not (np.isfinite(v) and v >= 0):
                raise GraftError(f"accelerator {self.name!r}: {f}={v}, expected a finite number >= 0")
        if min(self.conv_flops, self.matmul_flops, self.bandwidth) <= 0 or self.units < 1:
            raise GraftError(f"accelerator {self.name!r}: rates and units must be positive")

    def bw(self, share: np.ndarray | float) -> np.ndarray:
        """The fraction of the memory bandwidth that a share of the units can draw."""
        return np.minimum(1.0, self.bw_scale * np.asarray(share, dtype=float))

    def default_shares(self) -> np.ndarray:
        units = self.shares or (self.units,)
        return np.array(sorted({min(u, self.units) / self.units for u in units}))


FREE = ("conv_eff", "matmul_eff", "bw_eff", "bw_scale", "launch_s", "library_s", "kernel_s", "piece_s")
"""The parameters `fit` may move, and that a preset sets beyond the public specifications."""

CPU_FREE = ("conv_eff", "launch_s")
"""What to fit on a CPU measured on one model or two: a CPU profile has one share and few
launch-bound cells, so it cannot tell the bandwidth scale, the kernel floor or the per-piece cost
from the launch cost, and one model's memory-bound layers (a few in resnet50, many in
mobilenet_v2) fix the bandwidth efficiency too loosely to carry over to another."""

ACCELERATORS: dict[str, Accelerator] = {
    "h200": Accelerator(
        "h200", "NVIDIA H200", units=132,
        conv_flops=494e12, matmul_flops=67e12, bandwidth=4.8e12,
        shares=(16, 32, 64, 96, 132)),
    "a100": Accelerator(
        "a100", "NVIDIA A100-SXM4-80GB", units=108,
        conv_flops=156e12, matmul_flops=19.5e12, bandwidth=2.04e12,
        shares=(16, 32, 64, 96, 108)),
    "t4": Accelerator(
        "t4", "NVIDIA T4", units=40,
        conv_flops=8.1e12, matmul_flops=8.1e12, bandwidth=320e9,
        conv_eff=0.64, shares=(8, 16, 24, 32, 40)),
    "cpu": Accelerator(
        "cpu", "CPU, one x86-64 core with AVX2", units=1,
        conv_flops=100e9, matmul_flops=100e9, bandwidth=20e9,
        conv_eff=0.5, matmul_eff=0.5, bw_eff=0.5, bw_scale=1.0,
        launch_s=5e-6, library_s=10e-6, kernel_s=1e-6, piece_s=20e-6, overlap=False, shares=(1,)),
}
ACCELERATORS["a100-40gb"] = dataclasses.replace(  # the same chip with HBM2 instead of HBM2e
    ACCELERATORS["a100"], name="a100-40gb", description="NVIDIA A100-SXM4-40GB", bandwidth=1.555e12)


def preset(which: Accelerator | str) -> Accelerator:
    """A preset by name, or ``which`` itself."""
    if isinstance(which, Accelerator):
        return which
    if which not in ACCELERATORS:
        raise GraftError(f"no accelerator preset {which!r}; presets: {sorted(ACCELERATORS)}")
    return ACCELERATORS[which]


@dataclass(frozen=True)
class _Layers:
    """One piece's layers as arrays (only those that launch kernels)."""

    flops: np.ndarray
    weights: np.ndarray
    traffic: np.ndarray
    kernels: np.ndarray
    conv: np.ndarray
    matmul: np.ndarray


def _layers(costs: Sequence[LayerCost]) -> _Layers:
    live = [c for c in costs if c.kernels > 0]
    arr = lambda f: np.array([f(c) for c in live], dtype=float)  # noqa: E731
    return _Layers(arr(lambda c: c.flops_per_row), arr(lambda c: c.weight_bytes),
                   arr(lambda c: c.read_bytes_per_row + c.write_bytes_per_row),
                   arr(lambda c: c.kernels), arr(lambda c: c.kind == "conv"),
                   arr(lambda c: c.kind == "matmul"))


def piece_latency(costs: Sequence[LayerCost] | _Layers, acc: Accelerator, shares, batches) -> np.ndarray:
    """One piece's modelled latency in seconds, ``t[share, batch]``."""
    L = costs if isinstance(costs, _Layers) else _layers(costs)
    s = np.asarray(shares, dtype=float)[None, :, None]
    b = np.asarray(batches, dtype=float)[None, None, :]
    col = lambda v: v[:, None, None]  # noqa: E731
    rate = (col(L.conv) * acc.conv_flops * acc.conv_eff
            + col(L.matmul) * acc.matmul_flops * acc.matmul_eff)
    with np.errstate(divide="ignore", invalid="ignore"):
        compute = np.where(col(L.flops) > 0, col(L.flops) * b / (np.maximum(rate, 1e-30) * s), 0.0)
    memory = (col(L.weights) + col(L.traffic) * b) / (acc.bandwidth * acc.bw_eff * acc.bw(s))
    device = np.maximum(compute, memory) + col(L.kernels) * acc.kernel_s
    host = L.kernels * acc.launch_s + (L.conv + L.matmul) * acc.library_s
    shape = (len(np.atleast_1d(shares)), len(np.atleast_1d(batches)))
    if len(host) == 0:
        return np.full(shape, acc.piece_s)
    if not acc.overlap:
        return acc.piece_s + host.sum() + device.sum(axis=0)
    issued = acc.piece_s + np.cumsum(host)                      # H_j: layer j issued
    after = np.flip(np.cumsum(np.flip(device, 0), 0), 0)        # sum of device_l for l >= j
    return np.maximum((col(issued) + after).max(axis=0), issued[-1])


def latency_table(costs: Sequence[Sequence[LayerCost]], acc: Accelerator | str, shares, batches) -> np.ndarray:
    """``latency_s[piece, share, batch]`` of pieces with these layer costs."""
    acc = preset(acc)
    return np.stack([piece_latency(c, acc, shares, batches) for c in costs])


def modelled(model: Any, example: Any, name: str, accelerator: Accelerator | str = "h200", pieces: int = 10,
             batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), shares: Sequence[float] | None = None) -> Profile:
    """A modelled `Profile` of ``model`` (example input with batch dim 0) on an accelerator preset
    (or your own `Accelerator`), cut as `graft_fx.serving.pieces.select` cuts it.

    ``shares`` are fractions of the accelerator (default: the preset's unit counts, e.g. 16, 32,
    64, 96 and all 132 SMs of an H200).
    """
    acc = preset(accelerator)
    sel = select(model, example, pieces)
    return profile_from_costs(name, sel.pieces, sel.costs(), acc, batches, shares)


def profile_from_costs(name: str, pieces: Sequence[Piece], costs: Sequence[Sequence[LayerCost]],
                       acc: Accelerator | str, batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
                       shares: Sequence[float] | None = None) -> Profile:
    """A modelled `Profile` from pieces and their layer costs (see `modelled`)."""
    acc = preset(acc)
    s = acc.default_shares() if shares is None else np.array(sorted(set(float(x) for x in shares)))
    b = np.array(sorted(set(int(x) for x in batches)))
    meta = {"model": "roofline", "accelerator": _as_dict(acc), "dtype": "float32",
            "precision": f"default: {PRECISIONS['default']}" if acc.conv_flops > acc.matmul_flops
                         else "default: float32 (no TF32 on this accelerator)",
            "timing": "modelled: roofline per layer with eager launch costs"}
    return Profile(name, acc.description, f"modelled (roofline, {acc.name.upper()} preset)",
                   tuple(pieces), s, b, latency_table(costs, acc, s, b), None, meta)


def _as_dict(acc: Accelerator) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(acc).items()}


def fragments(latency: np.ndarray) -> np.ndarray:
    """Fragment latencies ``[fragment, share, batch]`` from piece latencies: fragment ``f`` runs
    pieces ``f`` to the end."""
    return np.flip(np.cumsum(np.flip(np.asarray(latency), 0), 0), 0)


def costs_for(profile: Profile, model: Any, example: Any) -> list[tuple[LayerCost, ...]]:
    """The layer costs of ``model`` cut at the pieces of ``profile`` (e.g. one measured elsewhere)."""
    sel = select(model, example, at=[p.start for p in profile.pieces])
    ends = [p.end for p in sel.pieces]
    if ends != [p.end for p in profile.pieces]:
        raise GraftError(f"profile of {profile.model!r}: its pieces end at {[p.end for p in profile.pieces]}, "
                         f"the model cut at its starts gives {ends}")
    return sel.costs()


def errors(profile: Profile, costs: Sequence[Sequence[LayerCost]], acc: Accelerator | str) -> np.ndarray:
    """Relative errors ``modelled / measured - 1`` of fragment latencies over the profile's grid."""
    acc = preset(acc)
    model = fragments(latency_table(costs, acc, profile.shares, profile.batches))
    return model / fragments(profile.latency_s) - 1


def fit(acc: Accelerator | str, data: Sequence[tuple[Profile, Sequence[Sequence[LayerCost]]]], *,
        free: Sequence[str] = FREE, prior: float = 0.05, starts: int = 4, iterations: int = 60,
        bounds: Mapping[str, tuple[float, float]] | None = None) -> Accelerator:
    """``acc`` with its ``free`` parameters fitted to measured profiles.

    ``data`` pairs each measured `Profile` with the layer costs of its pieces (`costs_for`). The
    residuals are ``log(modelled) - log(measured)`` of every fragment at every measured share and
    batch size, plus ``prior * log(p / p_start)`` for each free parameter (scaled so that
    ``prior`` weighs the same against any amount of data). Efficiencies are kept at or below 1 and
    the bandwidth scale at or above 1 (``bounds`` overrides, in the parameters' units).

    Levenberg-Marquardt on log parameters with a numerical Jacobian. The model is piecewise
    smooth (a max of roofs and a pipeline), so the least squares have local minima: the search
    runs from ``acc`` and from ``starts - 1`` points around it (each parameter scaled by a random
    factor, about 2x either way, the same points every call) and keeps the best.
    """
    start = preset(acc)
    free = list(free)
    unknown = [f for f in free if f not in FREE]
    if unknown:
        raise GraftError(f"cannot fit {unknown}: free parameters are {list(FREE)}")
    if not data:
        raise GraftError("fit needs at least one measured profile")
    limits = {f: (1e-12, np.inf) for f in free}
    limits.update({f: (1e-6, 1.0) for f in free if f.endswith("_eff")})
    if "bw_scale" in limits:
        limits["bw_scale"] = (1.0, 1e3)
    limits.update(bounds or {})
    lo = np.log([limits[f][0] for f in free])
    hi = np.log([limits[f][1] for f in free])
    x0 = np.log([max(getattr(start, f), 1e-12) for f in free])
    prepared = [([_layers(c) for c in costs], p.shares, p.batches, np.log(fragments(p.latency_s)).ravel())
                for p, costs in data]
    if any(len(layers) != len(p.pieces) for (layers, *_), (p, _) in zip(prepared, data)):
        raise GraftError("fit: each profile needs the layer costs of each of its pieces")
    n = sum(len(target) for *_, target in prepared)
    weight = np.sqrt(n / len(x0)) * prior

    def at(x: np.ndarray) -> Accelerator:
        return dataclasses.replace(start, **{f: float(v) for f, v in zip(free, np.exp(x))})

    def residuals(x: np.ndarray) -> np.ndarray:
        a = at(x)
        parts = [np.log(fragments(np.stack([piece_latency(L, a, s, b) for L in layers]))).ravel() - target
                 for layers, s, b, target in prepared]
        return np.concatenate(parts + [weight * (x - x0)])

    rng = np.random.default_rng(0)
    best = None
    for k in range(max(1, starts)):
        x = x0 if k == 0 else x0 + rng.normal(0.0, 0.7, len(x0))
        x, r = _levenberg_marquardt(residuals, np.clip(x, lo, hi), lo, hi, iterations)
        if best is None or r @ r < best[1] @ best[1]:
            best = (x, r)
    return at(best[0])


def _levenberg_marquardt(residuals, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, iterations: int):
    """Minimise ``|residuals(x)|^2`` within ``[lo, hi]`` from ``x``: the point and its residuals."""
    r = residuals(x)
    damping = 1e-2
    for _ in range(iterations):
        J = np.empty((len(r), len(x)))
        for i in range(len(x)):
            step = np.zeros_like(x)
            step[i] = 1e-4
            J[:, i] = (residuals(x + step) - r) / 1e-4
        g, H = J.T @ r, J.T @ J
        for _ in range(12):
            x_new = np.clip(x + np.linalg.solve(H + damping * np.diag(np.diag(H) + 1e-9), -g), lo, hi)
            r_new = residuals(x_new)
            if r_new @ r_new < r @ r:
                break
            damping *= 4
        else:
            return x, r  # no step downhill: a minimum
        gain = r @ r - r_new @ r_new
        x, r = x_new, r_new
        damping = max(damping / 3, 1e-7)
        if gain < 1e-10 * (r @ r + 1e-30):
            break
    return x, r


def fitted_error(profile: Profile, costs: Sequence[Sequence[LayerCost]], acc: Accelerator | str) -> tuple[float, float]:
    """Median and worst absolute relative error of fragment latencies (see `errors`)."""
    e = np.abs(errors(profile, costs, acc))
    return float(np.median(e)), float(e.max())


def describe(acc: Accelerator) -> str:
    """One line with the preset's numbers."""
    return (f"{acc.name}: {acc.units} units, conv {acc.conv_flops / 1e12:g} TFLOP/s x {acc.conv_eff:.3g}, "
            f"matmul {acc.matmul_flops / 1e12:g} TFLOP/s x {acc.matmul_eff:.3g}, "
            f"{acc.bandwidth / 1e12:g} TB/s x {acc.bw_eff:.3g} (bw(s) = min(1, {acc.bw_scale:.3g} s)), "
            f"launch {acc.launch_s * 1e6:.3g} us + {acc.library_s * 1e6:.3g} us per conv/matmul, "
            f"kernel floor {acc.kernel_s * 1e6:.3g} us, piece {acc.piece_s * 1e6:.3g} us")


__all__ = ["ACCELERATORS", "CPU_FREE", "FREE", "Accelerator", "costs_for", "describe", "errors", "fit",
           "fitted_error", "fragments", "latency_table", "modelled", "piece_latency", "preset", "profile_from_costs"]
