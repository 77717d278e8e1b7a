"""Partitions an accelerator can actually make: the shares a plan may give an instance.

A plan's share is not any fraction of a GPU: it is a partition that a mechanism can carve out of
one device, and every instance of a plan lives inside one device. `Partitioning` says which
shares exist on one accelerator, how many fit on one device, how much memory a device has, and
what each partition costs on top of its model.

**Green contexts** (the default on GPUs, and how the shipped H200 profile was measured): a green
context owns a set of SMs, split from the device by ``cuDevSmResourceSplitByCount``, which rounds
the count up to the architecture's minimum and alignment. NVIDIA's guideline (CUDA Driver API
12.4, section "Green Contexts"): compute capability 6.x, at least 1 SM; 7.x, at least 2 and a
multiple of 2; 8.x, at least 4 and a multiple of 2; 9.0 and later, at least 8 and a multiple of 8.
So an H200 (132 SMs) splits into partitions of 8, 16, ..., 128 SMs, and the whole device (132) is
a partition of its own. The partitions on one device are disjoint: their SMs add up to at most
the device's. All green contexts of a device live in one process and one CUDA context.

**MPS** (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``): each client process is limited to a whole
percentage of the device's threads, which must be worth at least one SM. Volta and later MPS
serves at most 48 client CUDA contexts per device (NVIDIA Multi-Process Service guide, "Limits"),
and each client is a process with its own CUDA context. Percentages on one device add up to at
most 100 here, so that no partition is oversubscribed (MPS itself would accept more, without
isolation).

**Memory.** Each instance is charged ``weights + max_batch x activation bytes per row`` of the
pieces it runs (`Piece.weight_bytes`, `Piece.workspace_bytes`), and each CUDA context
``CONTEXT_BYTES``: a CUDA context with cuDNN and cuBLAS handles loaded holds a few hundred MB of
device memory (PyTorch reports about 300 to 500 MB on recent GPUs; 512 MiB is charged, a round
upper figure). Green contexts share their process's context, so a device pays for it once; every
MPS client pays for its own. Device memory is the vendor's figure less nothing: the caching
allocator's fragmentation is not modelled.

A `Partitioning` also exists for a CPU (partitions of whole cores, the memory unchecked) and for a
device no preset describes (whole percentages, memory unchecked), so that every profile plans.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import GraftError

GIB = 1 << 30
CONTEXT_BYTES = 512 << 20      # one CUDA context with cuDNN/cuBLAS workspaces
MPS_CLIENTS = 48               # client contexts per device, Volta and later

# compute capability major -> (least SMs, SM multiple) of a green context partition
GREEN_GRANULARITY = {6: (1, 1), 7: (2, 2), 8: (4, 2), 9: (8, 8), 10: (8, 8)}


@dataclass(frozen=True)
class Device:
    """One accelerator model: ``units`` SMs (cores for a CPU), ``memory_bytes`` of device memory
    (None: not checked), and its CUDA compute capability (None: not a CUDA GPU)."""

    name: str
    units: int
    memory_bytes: int | None
    capability: tuple[int, int] | None


# The GPUs the roofline presets model (`roofline.ACCELERATORS`), from the vendors' data sheets.
DEVICES = {
    "NVIDIA H200": Device("NVIDIA H200", 132, 141 * 10**9, (9, 0)),
    "NVIDIA A100-SXM4-80GB": Device("NVIDIA A100-SXM4-80GB", 108, 80 * GIB, (8, 0)),
    "NVIDIA A100-SXM4-40GB": Device("NVIDIA A100-SXM4-40GB", 108, 40 * GIB, (8, 0)),
    "NVIDIA T4": Device("NVIDIA T4", 40, 16 * GIB, (7, 5)),
}
MECHANISMS = ("green-context", "mps")


@dataclass(frozen=True)
class Partitioning:
    """The shares one device offers: ``shares`` are fractions of the device, ascending, the last
    1.0 (the whole device); ``units`` of each share is ``share * device.units``.

    ``max_partitions`` is how many partitions one device holds at most (None: as many as fit), and
    ``context_bytes`` the memory each CUDA context costs, charged once per device (``shared_context``)
    or once per partition.
    """

    device: Device
    mechanism: str
    shares: tuple[float, ...]
    max_partitions: int | None = None
    context_bytes: int = 0
    shared_context: bool = True

    def __post_init__(self):
        s = np.array(self.shares, dtype=float)
        if not len(s) or np.any(np.diff(s) <= 0) or s[0] <= 0 or abs(s[-1] - 1) > 1e-12:
            raise GraftError(f"partitioning of {self.device.name}: shares {list(self.shares)}, expected "
                             "ascending fractions in (0, 1] ending at 1.0 (the whole device)")

    @property
    def grid(self) -> np.ndarray:
        return np.array(self.shares, dtype=float)

    def describe(self, share: float) -> str:
        """A share as the mechanism names it: "16 SMs", "12%", "1 core"."""
        units = share * self.device.units
        if self.mechanism == "green-context":
            return f"{round(units)} SMs"
        if self.mechanism == "cores":
            return f"{round(units)} core{'s' if round(units) != 1 else ''}"
        return f"{share * 100:.0f}%"

    def __str__(self) -> str:
        return (f"{self.mechanism} on {self.device.name}: {len(self.shares)} sizes from "
                f"{self.describe(self.shares[0])} to the whole device")


def green_contexts(device: Device) -> Partitioning:
    """Green-context partitions of ``device``; see the module docstring."""
    if device.capability is None:
        raise GraftError(f"{device.name} is not a CUDA GPU: expected one for green contexts")
    least, step = GREEN_GRANULARITY.get(device.capability[0], GREEN_GRANULARITY[max(GREEN_GRANULARITY)])
    sizes = sorted({*range(least, device.units, step), device.units})
    return Partitioning(device, "green-context", tuple(u / device.units for u in sizes),
                        context_bytes=CONTEXT_BYTES, shared_context=True)


def mps(device: Device) -> Partitioning:
    """MPS active-thread percentages of ``device``, each worth one SM or more."""
    least = math.ceil(100 / device.units)
    return Partitioning(device, "mps", tuple(p / 100 for p in range(least, 101)), MPS_CLIENTS,
                        CONTEXT_BYTES, shared_context=False)


def steps(step: float, device: str = "any accelerator") -> Partitioning:
    """Shares in multiples of ``step`` of one device whose memory is not checked (for a device no
    preset describes, and for studies of the planner)."""
    if not (0 < step <= 1):
        raise GraftError(f"share step {step}: expected a fraction of one accelerator in (0, 1]")
    count = int(math.floor(1 / step + 1e-9))
    shares = sorted({*np.round(np.arange(1, count + 1) * step, 12).tolist(), 1.0})
    return Partitioning(Device(device, count, None, None), "fraction", tuple(shares))


def cores(name: str, count: int | None = None) -> Partitioning:
    """Partitions of whole cores of a CPU (``count``: this machine's by default)."""
    count = count or os.cpu_count() or 1
    return Partitioning(Device(name, count, None, None), "cores",
                        tuple(k / count for k in range(1, count + 1)))


def for_device(name: str, mechanism: str = "green-context") -> Partitioning:
    """The partitioning of the device a profile names (`Profile.device`).

    A GPU in `DEVICES` gets ``mechanism``; a CPU ("CPU (...)", as `measure.device_name` names it)
    whole cores; any other device whole percentages, memory unchecked (the output says so).
    """
    if mechanism not in MECHANISMS:
        raise GraftError(f"partition mechanism {mechanism!r}: expected one of {', '.join(MECHANISMS)}")
    if name in DEVICES:
        return green_contexts(DEVICES[name]) if mechanism == "green-context" else mps(DEVICES[name])
    if name.startswith("CPU"):
        return cores(name)
    return steps(0.01, name)
