"""Turning what a user types (a trace name or file, a profile preset or file) into the objects.

A profile spec resolves in this order: an existing file is a JSON profile to load; ``cpu``
is this machine's CPU at every thread count, measured once and cached on disk
(`profile_cache.measured_here`); a GPU preset (``h200``, ``a100``, ``t4``) is the profile measured on that
GPU when the package ships one holding the model, and otherwise the roofline model of that GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import GraftError
from . import measure, profile_cache, profiles, roofline
from .profiles import Profile
from .traces import Trace, bundled, bundled_names, load_trace

CPU_BATCHES = profile_cache.BATCHES  # the batch sizes a ``cpu`` profile is measured at


def trace_for(spec: str, format: str = "auto") -> Trace:
    """A bundled trace by name, or a trace file in ``format``."""
    if spec in bundled_names():
        return bundled(spec)
    if not Path(spec).is_file():
        raise GraftError(f"trace {spec!r}: expected a bundled trace ({', '.join(bundled_names())}) "
                         f"or the path of a trace file")
    return load_trace(spec, format)


def profile_for(spec: str, name: str, model: torch.nn.Module, example: torch.Tensor,
                progress: measure.Progress | None = None) -> Profile:
    """The latency profile ``spec`` names for model ``name`` (see the module docstring)."""
    if Path(spec).is_file():
        return profiles.load(spec, name)
    if spec == "cpu":
        return profile_cache.measured_here(name, model, example, progress=progress)
    if spec in roofline.ACCELERATORS:
        shipped = profiles.shipped()
        if spec in shipped and name in profiles.models_in(shipped[spec]):
            return profiles.load(shipped[spec], name)
        return roofline.modelled(model, example, name, roofline.ACCELERATORS[spec])
    raise GraftError(f"profile {spec!r}: expected a JSON profile path, cpu, or a GPU preset "
                     f"({', '.join(sorted(roofline.ACCELERATORS))})")
