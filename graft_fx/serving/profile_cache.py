"""This machine's CPU profile of a model, measured once and cached on disk.

`measured_here` times a model's pieces on this machine's CPU (`graft_fx.serving.measure`) at
every whole number of PyTorch threads from 1 to ``torch.get_num_threads()`` (the shares a CPU
partition of the serving runtime can run on) and at `BATCHES` rows, with `REPS` timed runs after
`WARMUP` untimed ones. That takes a minute or more for a resnet50 on a small CPU, and every
``graft simulate --profile cpu`` and every CPU runtime needs it, so the profile is written as
JSON (`measure.document`, read back with `profiles.load`) and reused.

**The cache key** (the file name) is a hash of everything that would change the measurement:
the model's name, a fingerprint of its structure (`fingerprint`: its ``repr``, the source of the
``forward`` of every module class in it, the name, shape and dtype of every parameter and buffer,
and train/eval modes; not the weights' values, which do not change the time of dense kernels
and are random in a zoo model), the example's row shapes and dtypes, the CPU
(`measure.device_name`), the thread count, the torch version, and the measurement settings
(precision, batches, pieces, reps, warmup). What the hash does not cover, it cannot notice: a
machine under other load, a BIOS setting, a change to graft_fx's capture that renames cuts.
Delete the directory to measure again.

A cache file that cannot be read, is not a valid profile, or does not hold the shares and
batches asked for is measured again, with a warning, and overwritten; never trusted. Files are
written to a temporary name and renamed, so a reader never sees half a file and two processes
measuring at once leave one whole file.

The directory: ``cache_dir`` if given, else ``$GRAFT_FX_CACHE`` (the directory of profiles
itself), else ``~/.cache/graft_fx/profiles/``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GraftError
from . import measure, profiles
from .profiles import Profile

BATCHES = (1, 2, 4, 8)
"""Batch sizes measured: a CPU's latency grows about linearly past a few rows."""
REPS = 5
"""Timed runs per cell (median and p99 of these): runtime fidelity needs steadier figures than 3."""
WARMUP = 2
"""Untimed runs before the timed ones of each cell."""
PIECES = 10
"""Pieces the model is timed as (`graft_fx.serving.pieces.spread`)."""
PRECISION = "default"
"""`profiles.PRECISIONS` entry measured (float32; a CPU has no TF32)."""
FORMAT = 1
"""Bumped when what is cached changes meaning, so old files are not read as new ones."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The directory of cached profiles (see the module docstring)."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("GRAFT_FX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "graft_fx" / "profiles"


def fingerprint(model: torch.nn.Module, example: Any) -> str:
    """A hash of what makes ``model`` take the time it takes on ``example``'s row shapes (see
    the module docstring): structure, code, tensor shapes and dtypes, modes; never values."""
    def source(cls: type) -> str:
        try:
            return inspect.getsource(cls.forward)
        except (OSError, TypeError, AttributeError):
            return f"{cls.__module__}.{cls.__qualname__}"

    examples = example if isinstance(example, (tuple, list)) else (example,)
    parts = {
        "repr": repr(model),
        "forward": sorted({source(type(m)) for m in model.modules()}),
        "tensors": [(n, list(t.shape), str(t.dtype)) for n, t in
                    [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]],
        "training": [m.training for m in model.modules()],
        "example": [(list(t.shape[1:]), str(t.dtype)) if isinstance(t, torch.Tensor) else repr(t)
                    for t in examples],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_key(name: str, model: torch.nn.Module, example: Any) -> dict[str, Any]:
    """Everything the measurement depends on (see the module docstring), as a JSON object."""
    threads = torch.get_num_threads()
    return {"format": FORMAT, "model": name, "fingerprint": fingerprint(model, example),
            "cpu": measure.device_name("cpu"), "threads": threads, "torch": torch.__version__,
            "precision": PRECISION, "batches": list(BATCHES), "cores": list(range(1, threads + 1)),
            "pieces": PIECES, "reps": REPS, "warmup": WARMUP}


def cache_path(name: str, model: torch.nn.Module, example: Any, cache_dir: str | Path | None = None) -> Path:
    """The file that holds (or will hold) the profile `measured_here` returns."""
    digest = hashlib.sha256(json.dumps(cache_key(name, model, example), sort_keys=True).encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64] or "model"
    return cache_root(cache_dir) / f"{safe}-cpu-{digest[:20]}.json"


def measured_here(name: str, model: torch.nn.Module, example: Any, progress: measure.Progress | None = None,
                  cache_dir: str | Path | None = None) -> Profile:
    """The profile of ``model`` (called ``name``; ``example``: its input, batch dim 0) on this
    machine's CPU at 1 .. ``torch.get_num_threads()`` threads and `BATCHES` rows, from the cache
    when it holds one measured under the same key, else measured now and cached.

    ``progress`` is as `measure.measure` takes it (a tqdm bar: its total grows by the cells
    measured; a cache hit adds nothing). The profile returned is the one read back from the
    cache file (its ``source`` names the file), the same on the first call as on later ones;
    where the file cannot be written, a warning says so and the measured profile is returned.
    Raises what `measure.measure` raises for a model it cannot cut or time.
    """
    key = cache_key(name, model, example)
    path = cache_path(name, model, example, cache_dir)
    if path.exists():
        try:
            return _checked(profiles.load(path, name), key, path)
        except GraftError as e:
            warnings.warn(f"ignoring the cached CPU profile {path}: {e}; measuring again", stacklevel=2)
    profile = measure.measure(model, example, name, pieces=PIECES, batches=BATCHES, device="cpu", reps=REPS,
                              warmup=WARMUP, cores=key["cores"], precision=PRECISION, progress=progress)
    try:
        _write(path, {**measure.document([profile]), "cache_key": key})
        return _checked(profiles.load(path, name), key, path)
    except (OSError, GraftError) as e:
        warnings.warn(f"could not cache the CPU profile of {name!r} at {path}: {e}", stacklevel=2)
        return profile


def _checked(profile: Profile, key: dict[str, Any], path: Path) -> Profile:
    """``profile`` if it holds the shares and batches ``key`` asks for; GraftError otherwise."""
    shares = np.array(key["cores"]) / key["threads"]
    if profile.batches.tolist() != key["batches"] or not np.allclose(profile.shares, shares, rtol=1e-9):
        raise GraftError(f"{path.name} holds shares {profile.shares.tolist()} and batches {profile.batches.tolist()}, "
                         f"expected {shares.tolist()} and {key['batches']}")
    return profile


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a temporary file in the same directory, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
