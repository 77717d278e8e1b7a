"""Latency profiles: how long each piece of a model takes against batch size and accelerator share.

A model is cut at consecutive cut points into *pieces*; piece ``i`` runs from cut ``i`` to cut
``i + 1`` (the last one to the output). A request for fragment type ``f`` (cut ``f``) runs pieces
``f, f + 1, ...`` on the server, and a realigned group runs piece ``i`` once on the rows of every
member whose cut is at or before ``i``. Eager execution launches the pieces' kernels one after
another, so a batch's latency is the sum of its pieces' latencies at their row counts
(`Profile.batch_s`); the H200 measurements in benchmarks/ bear that out.

A `Profile` holds one model's table ``latency_s[piece, share, batch]`` at a few measured shares
(fractions of one accelerator) and batch sizes, wherever it came from: *measured* on the machine
at hand (`graft_fx.serving.measure`), *loaded* from a JSON file measured elsewhere, or *modelled*
with a roofline (`graft_fx.serving.roofline`). Between the grid points it interpolates:

- **rows**: linearly between measured batch sizes, through 0 at 0 rows, and beyond the largest
  measured batch along the last segment's slope (a GPU that is already full grows linearly);
- **share**: linearly between measured shares; below the smallest one, latency grows as
  ``1 / share`` (all the work runs on proportionally fewer units: the pessimistic end, since
  launch-bound work barely slows down); above the largest one, it stays at the largest's (a
  profile measured without the whole device says nothing about how much faster it would be).

Measurements are noisy (a 96-SM run can be slower than a 64-SM one), but the planner and the
batching policy rely on latency never falling when a batch grows or a share shrinks. The table is
therefore made monotone on construction: a cumulative maximum along batch size, then along
decreasing share (and the extrapolating slopes likewise). Measured files keep the raw data; a
saved `Profile` writes its cleaned table.

JSON (one file may hold several models; ``sm_count`` set means shares are keyed by SM count, with
"0" for the whole device, otherwise by fraction)::

    {"device": "NVIDIA H200", "sm_count": 132, "source": "measured", "batches": [1, 2, 4, ...],
     "models": {"resnet50": {"input_side": 224, "pieces": [
        {"from": "x", "to": "relu_", "flops_share": 0.03, "activation_bytes": 602112,
         "row_shape": [3, 224, 224], "latency_ms": {"0": {"1": 0.095, ...}, "16": {...}},
         "latency_p99_ms": {...}}]}}}
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GraftError

# How a profile's kernels compute (its ``meta["precision"]`` is "name: description").
PRECISIONS = {
    "default": "float32, TF32 convolutions and FP32 matrix products (PyTorch's defaults)",
    "tf32": "float32 with TF32 convolutions and matrix products",
    "fp32": "float32 without TF32",
    "bf16": "bfloat16 weights and activations",
}


@dataclass(frozen=True)
class Piece:
    """The layers from cut ``start`` to cut ``end`` ("output" for the last piece).

    ``flops_share`` is the piece's fraction of the model's FLOPs; ``activation_bytes`` and
    ``row_shape`` describe one row of the tensor that crosses ``start`` (what a phone cutting
    there uploads). For charging device memory (`graft_fx.serving.deployment`): ``weight_bytes``,
    the parameters and buffers the piece reads, and ``workspace_bytes``, the activation bytes per
    row that its largest layer reads and writes at once (None where the profile does not say).
    """

    start: str
    end: str
    flops_share: float
    activation_bytes: int
    row_shape: tuple[int, ...]
    weight_bytes: int | None = None
    workspace_bytes: int | None = None


@dataclass(frozen=True, eq=False)
class Profile:
    """One model's piece latencies on one device; see the module docstring.

    ``latency_s[piece, share, batch]`` is indexed by ``shares`` (ascending fractions in (0, 1])
    and ``batches`` (ascending batch sizes from 1); ``p99_s`` is the same shape where measured.
    ``source`` says where the numbers came from ("measured", "loaded from ...", "modelled ...")
    and is shown wherever a figure is reported.
    """

    model: str
    device: str
    source: str
    pieces: tuple[Piece, ...]
    shares: np.ndarray
    batches: np.ndarray
    latency_s: np.ndarray
    p99_s: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        shares = np.asarray(self.shares, dtype=float)
        batches = np.asarray(self.batches, dtype=int)
        latency = np.asarray(self.latency_s, dtype=float)
        expected = (len(self.pieces), len(shares), len(batches))
        problems = []
        if not self.pieces:
            problems.append("no pieces")
        if latency.shape != expected:
            problems.append(f"latency table of shape {latency.shape}, expected {expected}")
        if len(shares) == 0 or not np.all(np.isfinite(shares)) or np.any(np.diff(shares) <= 0) or shares[0] <= 0 \
                or shares[-1] > 1:
            problems.append(f"shares {shares.tolist()}: expected ascending fractions in (0, 1]")
        if len(batches) == 0 or np.any(np.diff(batches) <= 0) or batches[0] != 1:
            problems.append(f"batches {batches.tolist()}: expected ascending sizes from 1")
        if latency.size and not (np.all(np.isfinite(latency)) and np.all(latency > 0)):
            problems.append("latencies that are not positive and finite")
        if problems:
            raise GraftError(f"profile of {self.model!r} on {self.device!r}: {'; '.join(problems)}")
        object.__setattr__(self, "shares", shares)
        object.__setattr__(self, "batches", batches)
        object.__setattr__(self, "latency_s", _monotone(latency))
        object.__setattr__(self, "_knots", _knots(batches))
        object.__setattr__(self, "_grid", _extend(self.latency_s, batches))

    @property
    def label(self) -> str:
        """What the figures come from, for reports: the device, how they were obtained, and at
        which precision (`measure.PRECISIONS`)."""
        return f"{self.device}: {self.source}; {self.meta.get('precision', 'precision not recorded')}"

    @functools.cached_property
    def planning(self) -> Profile:
        """The profile a planner sizes with: the p99 service times where they were measured
        (a plan then holds for all but the slowest 1% of batches), else this one."""
        if self.p99_s is None:
            return self
        return dataclasses.replace(self, latency_s=self.p99_s, p99_s=None, source=f"{self.source}, p99")

    @property
    def max_batch(self) -> int:
        """The largest measured batch: batches beyond it are extrapolated."""
        return int(self.batches[-1])

    @property
    def fragments(self) -> tuple[str, ...]:
        """The cut each fragment type starts at: fragment ``f`` runs pieces ``f`` onwards."""
        return tuple(p.start for p in self.pieces)

    def table(self, share: float, max_rows: int | None = None) -> np.ndarray:
        """``t[piece, rows]``: each piece's latency in seconds on ``rows`` rows (0 .. max_rows,
        default `max_batch`) at ``share``; ``t[:, 0] == 0``. Read-only and cached."""
        return _table(self, _check_share(share), self.max_batch if max_rows is None else max_rows)

    def piece_s(self, piece: int, rows: float, share: float) -> float:
        """One piece's latency on ``rows`` (possibly fractional) rows at ``share``."""
        return float(_at_rows(_share_slice(self, _check_share(share))[piece], self._knots, rows))

    def pieces_s(self, rows: np.ndarray, share: float, first: int = 0) -> np.ndarray:
        """Latencies of pieces ``first, first + 1, ...`` at ``rows[p - first, ...]`` rows each
        (fractional rows allowed: between 0 and 1 row the latency is the expected one of a piece
        that runs in that fraction of batches). The result has the shape of ``rows``."""
        rows = np.asarray(rows, dtype=float)
        latency = _share_slice(self, _check_share(share))[first:first + len(rows)]
        flat = rows.reshape(len(rows), -1)
        xs, ys = self._knots, latency
        j = np.clip(np.searchsorted(xs, flat, side="right") - 1, 0, len(xs) - 2)
        w = (flat - xs[j]) / (xs[j + 1] - xs[j])
        lo, hi = np.take_along_axis(ys, j, axis=1), np.take_along_axis(ys, j + 1, axis=1)
        return (lo * (1 - w) + hi * w).reshape(rows.shape)

    def fragment_s(self, fragment: int, rows: int, share: float) -> float:
        """A batch of ``rows`` requests of one fragment type: pieces ``fragment`` onwards."""
        return float(self.table(share, max(rows, self.max_batch))[fragment:, rows].sum())

    def batch_s(self, counts: Mapping[int, int], share: float) -> float:
        """A realigned batch with ``counts[f]`` requests of fragment type ``f``: piece ``i`` runs
        once on the rows of every type at or before ``i``."""
        rows = np.zeros(len(self.pieces), dtype=int)
        for f, n in counts.items():
            rows[f] += n
        rows = np.cumsum(rows)
        t = self.table(share, max(int(rows[-1]), self.max_batch))
        return float(t[np.arange(len(self.pieces)), rows].sum())

    def _at_share(self, share: float) -> np.ndarray:
        """``latency[piece, knot]`` at ``share`` (`share_weights`)."""
        return sum(w * self._grid[:, j, :] for j, w in share_weights(self.shares, share))

    def scaled(self, factors: Sequence[float], why: str) -> Profile:
        """This profile with every latency at share ``shares[j]`` multiplied by ``factors[j]``
        (median and p99 alike), ``why`` appended to its source and the factors recorded in
        ``meta["scaled"]``: a profile measured once, brought to how fast the device runs now
        (`measure.calibrate`)."""
        factors = np.asarray(factors, dtype=float)
        if factors.shape != self.shares.shape or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
            raise GraftError(f"scale factors {factors.tolist()}: expected one positive number per share "
                             f"({len(self.shares)})")
        k = factors[None, :, None]
        return dataclasses.replace(self, source=f"{self.source}; {why}", latency_s=self.latency_s * k,
                                   p99_s=None if self.p99_s is None else np.asarray(self.p99_s) * k,
                                   meta={**self.meta, "scaled": factors.tolist()})

    def to_json(self) -> dict[str, Any]:
        """This profile as a one-model JSON document (shares keyed by fraction)."""
        def cells(table: np.ndarray, piece: int) -> dict[str, dict[str, float]]:
            return {repr(float(s)): {str(int(b)): float(table[piece, j, k]) * 1e3
                                     for k, b in enumerate(self.batches)}
                    for j, s in enumerate(self.shares)}

        pieces = []
        for i, p in enumerate(self.pieces):
            entry = {"from": p.start, "to": p.end, "flops_share": p.flops_share,
                     "activation_bytes": p.activation_bytes, "row_shape": list(p.row_shape),
                     **memory_fields(p), "latency_ms": cells(self.latency_s, i)}
            if self.p99_s is not None:
                entry["latency_p99_ms"] = cells(np.asarray(self.p99_s), i)
            pieces.append(entry)
        return {"device": self.device, "source": self.source, "sm_count": None,
                "batches": [int(b) for b in self.batches], **dict(self.meta),
                "models": {self.model: {"pieces": pieces}}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))


def memory_fields(p: Piece) -> dict[str, int]:
    """A piece's memory figures as JSON fields (those it has)."""
    return {k: getattr(p, k) for k in ("weight_bytes", "workspace_bytes") if getattr(p, k) is not None}


def share_weights(measured: np.ndarray, share: float) -> list[tuple[int, float]]:
    """How latency at ``share`` follows from latency at the ``measured`` shares (ascending):
    ``Σ weight × latency[index]`` over the returned ``(index, weight)`` pairs. Linear between
    measured shares; below the smallest, that share's latency times ``smallest / share`` (all the
    work on proportionally fewer units); above the largest, the largest's (more of a device is
    never slower, and nothing measured says how much faster)."""
    if share <= measured[0]:
        return [(0, float(measured[0] / share))]
    if share >= measured[-1]:
        return [(len(measured) - 1, 1.0)]
    j = int(np.searchsorted(measured, share))
    t = float((share - measured[j - 1]) / (measured[j] - measured[j - 1]))
    return [(j - 1, 1 - t), (j, t)]


def _check_share(share: float) -> float:
    if not 0 < share <= 1:
        raise GraftError(f"share {share}: expected a fraction of one accelerator in (0, 1]")
    return float(share)


def _monotone(latency: np.ndarray) -> np.ndarray:
    """Non-decreasing in batch size, then non-increasing in share (see the module docstring)."""
    out = np.maximum.accumulate(latency, axis=2)
    out = np.flip(np.maximum.accumulate(np.flip(out, axis=1), axis=1), axis=1)
    out.setflags(write=False)
    return out


def _knots(batches: np.ndarray) -> np.ndarray:
    """The row counts the interpolation runs through: 0, the measured batches, and twice the
    largest, where the extrapolation is pinned."""
    return np.concatenate(([0], batches, [2 * batches[-1]])).astype(float)


def _extend(latency: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """``latency`` on the knots: 0 rows cost 0, and at twice the largest batch the last slope
    continues. The slopes are made non-increasing in share too, so that the extrapolation stays
    monotone in share."""
    slope = (latency[..., -1] - latency[..., -2]) / (batches[-1] - batches[-2]) if len(batches) > 1 \
        else latency[..., -1] / batches[-1]
    slope = np.flip(np.maximum.accumulate(np.flip(slope, axis=1), axis=1), axis=1)
    far = latency[..., -1] + slope * batches[-1]
    grid = np.concatenate((np.zeros(latency.shape[:-1] + (1,)), latency, far[..., None]), axis=-1)
    grid.setflags(write=False)
    return grid


def _at_rows(ys: np.ndarray, xs: np.ndarray, rows) -> np.ndarray:
    """Values ``ys`` (last axis over the knots ``xs``) at ``rows``: linear between knots, and
    along the last segment beyond them."""
    rows = np.asarray(rows, dtype=float)
    j = np.clip(np.searchsorted(xs, rows, side="right") - 1, 0, len(xs) - 2)
    w = (rows - xs[j]) / (xs[j + 1] - xs[j])
    return ys[..., j] * (1 - w) + ys[..., j + 1] * w


@functools.lru_cache(maxsize=4096)
def _share_slice(profile: Profile, share: float) -> np.ndarray:
    return profile._at_share(share)


@functools.lru_cache(maxsize=4096)
def _table(profile: Profile, share: float, max_rows: int) -> np.ndarray:
    # interpolating between equal knots can round a cell a hair below the one before it; the
    # batching policy relies on a batch never getting cheaper as it grows
    t = np.maximum.accumulate(_at_rows(_share_slice(profile, share), profile._knots, np.arange(max_rows + 1)), axis=1)
    t.setflags(write=False)
    return t


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """``obj[key]`` checked to be a ``kind``; a GraftError naming the field otherwise."""
    if not isinstance(obj, Mapping):
        raise GraftError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        if default is not ...:
            return default
        raise GraftError(f"{where}: missing field {key!r}")
    value = obj[key]
    numeric = kind in (int, float, (int, float))
    if not isinstance(value, kind) or numeric and isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise GraftError(f"{where}.{key}: expected {names}, got {json.dumps(value)[:40]}")
    return value


def _cells(piece: Mapping[str, Any], key: str, share_keys: list[str], batches: list[int], where: str) -> list:
    """``piece[key][share][batch]`` in ms as a nested list [share][batch] of seconds."""
    table = _field(piece, key, Mapping, where)
    rows = []
    for s in share_keys:
        by_batch = _field(table, s, Mapping, f"{where}.{key}")
        rows.append([_field(by_batch, str(b), (int, float), f"{where}.{key}.{s}") / 1e3 for b in batches])
    return rows


def from_json(doc: Any, model: str, source: str | None = None) -> Profile:
    """The profile of ``model`` in a JSON document in the module docstring's format.

    Raises GraftError naming the first field that is missing or of the wrong type
    (``models.resnet50.pieces[3].latency_ms``), or the model when the document lacks it.
    """
    models = _field(doc, "models", Mapping, "profile")
    if model not in models:
        raise GraftError(f"profile has no model {model!r}: it has {sorted(models)}")
    sm_count = _field(doc, "sm_count", (int, type(None)), "profile", None)
    batches = _field(doc, "batches", list, "profile")
    if not batches or not all(isinstance(b, int) and not isinstance(b, bool) for b in batches):
        raise GraftError(f"profile.batches: expected a list of batch sizes, got {json.dumps(batches)[:40]}")
    pieces_doc = _field(models[model], "pieces", list, f"models.{model}")
    if not pieces_doc:
        raise GraftError(f"models.{model}.pieces: expected at least one piece")
    where = [f"models.{model}.pieces[{i}]" for i in range(len(pieces_doc))]
    share_keys = list(_field(pieces_doc[0], "latency_ms", Mapping, where[0]))
    try:
        shares = {k: _share(k, sm_count) for k in share_keys}
    except ValueError:
        raise GraftError(f"{where[0]}.latency_ms: expected shares as {'SM counts' if sm_count else 'fractions'}, "
                         f"got keys {share_keys}") from None
    share_keys.sort(key=shares.__getitem__)
    pieces = tuple(Piece(_field(p, "from", str, w), _field(p, "to", str, w),
                         float(_field(p, "flops_share", (int, float), w)), _field(p, "activation_bytes", int, w),
                         tuple(_field(p, "row_shape", list, w)), _field(p, "weight_bytes", (int, type(None)), w, None),
                         _field(p, "workspace_bytes", (int, type(None)), w, None))
                   for p, w in zip(pieces_doc, where))
    latency = np.array([_cells(p, "latency_ms", share_keys, batches, w) for p, w in zip(pieces_doc, where)])
    p99 = None
    if all(isinstance(p, Mapping) and "latency_p99_ms" in p for p in pieces_doc):
        p99 = np.array([_cells(p, "latency_p99_ms", share_keys, batches, w) for p, w in zip(pieces_doc, where)])
    meta = {k: doc[k] for k in ("torch", "dtype", "precision", "executor", "timing") if k in doc}
    return Profile(model, str(doc.get("device", "unknown device")), source or str(doc.get("source", "loaded")),
                   pieces, np.array([shares[k] for k in share_keys]), np.array(batches), latency, p99, meta)


def _share(key: str, sm_count: int | None) -> float:
    if sm_count:
        sms = int(key)
        return 1.0 if sms == 0 else min(sms / sm_count, 1.0)
    return float(key)


def load(path: str | Path, model: str) -> Profile:
    """The profile of ``model`` in the JSON file at ``path`` (measured elsewhere, or saved).

    Raises GraftError, one line naming the file and the field, for a file that cannot be read,
    is not JSON, or does not hold a valid profile of ``model``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GraftError(f"cannot read a latency profile from {path}: {e}") from None
    try:
        kind = str(doc.get("source", "measured")) if isinstance(doc, Mapping) else "measured"
        return from_json(doc, model, f"{kind}, loaded from {path.name}")
    except GraftError as e:
        raise GraftError(f"latency profile {path}: {e}") from None


def shipped() -> dict[str, Path]:
    """The GPU profiles that ship with the package: device label -> JSON path."""
    root = Path(__file__).parent / "data" / "profiles"
    return {p.stem: p for p in sorted(root.glob("*.json"))}


def models_in(path: str | Path) -> Sequence[str]:
    """The models a profile file holds."""
    return sorted(json.loads(Path(path).read_text()).get("models", {}))

