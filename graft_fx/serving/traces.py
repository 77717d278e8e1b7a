"""Network bandwidth traces: measured throughput over time, as the serving simulator sees it.

A `Trace` is a piecewise-constant rate: ``mbps[i]`` (Mbit/s, 10**6 bit/s) holds from
``times_s[i]`` until ``times_s[i + 1]``, and the last sample holds for ``step_s``, the median step.
Past its end a trace loops, as Mahimahi's ``mm-link`` replays its file, so it covers all of time.
``upload_time_s`` integrates the rate: with ``cum[i]`` the megabits delivered from 0 to
``times_s[i]`` (a cumulative sum, computed once), the upload ends at the first moment at which the
megabits delivered since time 0 reach those delivered by the start plus the upload. Finding that
moment is a binary search in ``cum`` and one division, and taking the *first* such moment means
that a stretch of zero bandwidth is waited out rather than skipped. ``upload_times_s`` does the
same for arrays of sizes and start times at once (the workload times every candidate upload of
every send of a phone in one call), and ``upload_time_s`` is its one-upload case.

Four file formats load into this model:

- **Pensieve** "cooked" traces (the HSDPA Norway and FCC sets): one ``time_s Mbps`` pair per line,
  whitespace-separated, time strictly increasing in irregular steps; shifted to start at 0.
- **Mahimahi** packet-delivery traces: one integer millisecond timestamp per line, each a chance to
  deliver one 1500-byte packet. Repeats mean several packets in one millisecond, so timestamps need
  only not decrease. The file's period is its last timestamp and ``mm-link`` loops with that
  period, so a timestamp equal to the period is the first chance of the next loop (window 0).
  Chances are counted in 1-second windows; a remainder under half a second joins the last window,
  whose rate is taken over its true length. ``*.up`` files are uplinks, ``*.down`` downlinks.
- **Ghent** 4G/LTE logs (van der Hooft et al., 2016): six space-separated columns, ``epoch_ms
  ms_since_start latitude longitude bytes_since_last ms_since_last``. A line reports the bytes
  received in the interval that ends at its ``ms_since_start``, so its rate
  ``bytes * 8 / ms / 1000`` Mbit/s holds from the previous line's ``ms_since_start`` (for the first
  line, from ``ms_since_start - ms_since_last``, which is the time origin).
- **G-NetTrack Pro** exports, as published with public 4G and 5G datasets: comma- (or tab-)
  separated with a header row, a ``Timestamp`` column such as ``2019.12.16_14.23.32`` at one-second
  resolution, and ``DL_bitrate`` / ``UL_bitrate`` in kbit/s. Rows that share a second are averaged;
  rows whose Timestamp or chosen bitrate is empty (or ``-``) are skipped; other columns are ignored.

Pensieve, Ghent and FCC files measure downloads: for a phone's upload they are stand-ins at best
(see data/traces/README.md). A malformed file raises `GraftError` naming the file, the line and
what was expected there.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import GraftError

DIRECTIONS = ("uplink", "downlink", "unknown")
_PACKET_BITS = 1500 * 8
_WINDOW_MS = 1000
_MISSING = ("", "-")
_TIMESTAMP = "%Y.%m.%d_%H.%M.%S"
_BITRATE_COLUMN = {"uplink": "UL_bitrate", "downlink": "DL_bitrate"}
_GHENT_COLUMNS = (
    "epoch_ms", "ms_since_start", "latitude", "longitude", "bytes_since_last", "ms_since_last",
)

# Bundled name -> (folder, file) under data/traces/; README.md there gives sources and licenses.
_BUNDLED = {
    "3g-norway-bus-1": ("hsdpa-norway", "norway_bus_1"),
    "3g-norway-train-1": ("hsdpa-norway", "norway_train_1"),
    "3g-norway-tram-10": ("hsdpa-norway", "norway_tram_10"),
    "fcc-10730": ("fcc", "trace_10730_http---www.facebook.com"),
    "fcc-8996": ("fcc", "trace_8996_http---www.facebook.com"),
    "fcc-942598": ("fcc", "trace_942598_http---www.youtube.com"),
    "lte-verizon-up": ("lte-mahimahi", "Verizon-LTE-short.up"),
    "lte-verizon-down": ("lte-mahimahi", "Verizon-LTE-short.down"),
    "lte-att-driving-up": ("lte-mahimahi", "ATT-LTE-driving-2016.up"),
    "lte-ghent-car-7": ("lte-ghent", "report_car_0007.log"),
    "lte-ghent-foot-1": ("lte-ghent", "report_foot_0001.log"),
}


@dataclass(frozen=True, eq=False)
class Trace:
    """Throughput over time: ``mbps[i]`` Mbit/s from ``times_s[i]`` to the next sample, looping.

    ``times_s`` starts at 0 and strictly increases; the last sample holds for ``step_s``. Both
    arrays are stored as read-only float64 copies.
    """

    name: str
    times_s: np.ndarray
    mbps: np.ndarray
    source_format: str
    direction: str = "unknown"

    def __post_init__(self):
        times = np.array(self.times_s, dtype=np.float64)
        mbps = np.array(self.mbps, dtype=np.float64)
        problem = _trace_problem(times, mbps, self.direction)
        if problem:
            raise GraftError(f"trace {self.name!r}: expected {problem}")
        times.flags.writeable = mbps.flags.writeable = False
        object.__setattr__(self, "times_s", times)
        object.__setattr__(self, "mbps", mbps)

    @cached_property
    def step_s(self) -> float:
        """How long the last sample holds: the median step (1 s for a single sample)."""
        return float(np.median(np.diff(self.times_s))) if self.times_s.size > 1 else 1.0

    @cached_property
    def duration_s(self) -> float:
        """The length of one loop of the trace."""
        return float(self.times_s[-1]) + self.step_s

    @cached_property
    def _cum_mbit(self) -> np.ndarray:
        """Megabits delivered from 0 to each sample's start, then to the end of the loop (n + 1)."""
        widths = np.diff(self.times_s, append=self.duration_s)
        return np.concatenate(([0.0], np.cumsum(self.mbps * widths)))

    @property
    def mean_mbps(self) -> float:
        """The time-weighted mean throughput over one loop."""
        return float(self._cum_mbit[-1]) / self.duration_s

    def at(self, t):
        """The bandwidth in Mbit/s at time ``t`` in seconds (a scalar or an array), looping."""
        i = np.searchsorted(self.times_s, np.mod(t, self.duration_s), side="right") - 1
        return self.mbps[i]

    def upload_time_s(self, nbytes: float, start_s: float = 0.0) -> float:
        """Seconds to upload ``nbytes`` bytes from ``start_s`` on, waiting out zero bandwidth."""
        return float(self.upload_times_s(nbytes, start_s))

    def upload_times_s(self, nbytes: float | np.ndarray, starts_s: float | np.ndarray) -> np.ndarray:
        """`upload_time_s` elementwise over ``nbytes`` and ``starts_s`` (numbers or arrays that
        broadcast together), computed at once and exactly as one at a time: float64 seconds.

        Raises GraftError for a negative (or NaN) size and for a trace of zero bandwidth
        throughout."""
        nbytes, starts = np.asarray(nbytes), np.asarray(starts_s, dtype=np.float64)
        if not np.all(nbytes >= 0):
            raise GraftError(f"upload of {nbytes} bytes: expected a non-negative size")
        if self._cum_mbit[-1] == 0:
            raise GraftError(f"trace {self.name!r} has zero bandwidth throughout: expected some")
        ends = self._time_of(self._mbit_by(starts) + nbytes * 8 / 1e6)
        return np.where(nbytes == 0, 0.0, np.maximum(ends - starts, 0.0))

    def _mbit_by(self, t: np.ndarray) -> np.ndarray:
        """Megabits delivered from time 0 to each time in ``t``."""
        loops, u = np.divmod(t, self.duration_s)
        i = np.searchsorted(self.times_s, u, side="right") - 1
        return loops * self._cum_mbit[-1] + self._cum_mbit[i] + self.mbps[i] * (u - self.times_s[i])

    def _time_of(self, mbit: np.ndarray) -> np.ndarray:
        """The first time at which each of ``mbit`` megabits has been delivered since time 0."""
        per_loop = self._cum_mbit[-1]
        loops, rest = np.divmod(mbit, per_loop)
        # rest == 0: reached by the end of a loop's last nonzero stretch, not in the next loop
        at_end = rest == 0
        loops, rest = np.where(at_end, loops - 1, loops), np.where(at_end, per_loop, rest)
        i = np.searchsorted(self._cum_mbit, rest, side="left") - 1  # cum[i] < rest <= cum[i+1]
        return loops * self.duration_s + self.times_s[i] + (rest - self._cum_mbit[i]) / self.mbps[i]


def _trace_problem(times: np.ndarray, mbps: np.ndarray, direction: str) -> str | None:
    """What is wrong with a trace's arrays, as what was expected instead; None if nothing is."""
    if times.ndim != 1 or times.shape != mbps.shape or times.size == 0:
        return f"times_s and mbps of one non-zero length, got shapes {times.shape}, {mbps.shape}"
    if not (np.isfinite(times).all() and np.isfinite(mbps).all()):
        return "finite times_s and mbps"
    if times[0] != 0 or np.any(np.diff(times) <= 0):
        return "times_s strictly increasing from 0"
    if np.any(mbps < 0):
        return "non-negative mbps"
    if direction not in DIRECTIONS:
        return f"direction one of {', '.join(DIRECTIONS)}, got {direction!r}"
    return None


def load_pensieve(path) -> Trace:
    """A Pensieve "cooked" trace: ``time_s Mbps`` per line (the HSDPA Norway and FCC sets)."""
    path = Path(path)
    values, lines = _numeric_rows(path, ("time_s", "Mbps"))
    times, mbps = values.T
    _require(path, lines[1:], np.diff(times) > 0, "a time_s larger than on the line before")
    _require(path, lines, mbps >= 0, "a non-negative Mbps")
    return Trace(path.name, times - times[0], mbps, "pensieve", "downlink")


def load_mahimahi(path) -> Trace:
    """A Mahimahi packet-delivery trace, counted in 1-second windows over its period."""
    path = Path(path)
    values, lines = _numeric_rows(path, ("ms",), integer=True)
    ms = values[:, 0]
    _require(path, lines, ms >= 0, "a non-negative timestamp")
    _require(path, lines[1:], np.diff(ms) >= 0, "a timestamp no smaller than on the line before")
    period = ms[-1]
    if period == 0:
        raise GraftError(f"{path}: expected a last timestamp above 0 ms (the trace's period)")
    windows = max(1, round(period / _WINDOW_MS))
    window = np.minimum(ms % period // _WINDOW_MS, windows - 1).astype(np.int64)
    packets = np.bincount(window, minlength=windows)
    window_ms = np.full(windows, float(_WINDOW_MS))
    window_ms[-1] = period - _WINDOW_MS * (windows - 1)
    direction = {".up": "uplink", ".down": "downlink"}.get(path.suffix, "unknown")
    times = np.arange(windows) * (_WINDOW_MS / 1000)
    return Trace(path.name, times, packets * _PACKET_BITS / window_ms / 1000, "mahimahi", direction)


def load_ghent(path) -> Trace:
    """A Ghent 4G/LTE log: 6 columns, bytes received per interval of about a second."""
    path = Path(path)
    values, lines = _numeric_rows(path, _GHENT_COLUMNS)
    since_start_ms, nbytes, interval_ms = values[:, 1], values[:, 4], values[:, 5]
    _require(path, lines[1:], np.diff(since_start_ms) > 0,
             "an ms_since_start larger than on the line before")
    _require(path, lines, interval_ms > 0, "a positive ms_since_last")
    _require(path, lines, nbytes >= 0, "a non-negative bytes_since_last")
    starts_ms = np.concatenate(([since_start_ms[0] - interval_ms[0]], since_start_ms[:-1]))
    times = (starts_ms - starts_ms[0]) / 1000
    return Trace(path.name, times, nbytes * 8 / interval_ms / 1000, "ghent", "downlink")


def load_gnettrack(path, direction: str = "uplink") -> Trace:
    """A G-NetTrack Pro CSV export; ``direction`` picks ``UL_bitrate`` or ``DL_bitrate``."""
    path = Path(path)
    column = _BITRATE_COLUMN.get(direction)
    if column is None:
        raise GraftError(f"direction {direction!r}: expected 'uplink' or 'downlink'")
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not text:
        raise GraftError(f"{path}: empty file, expected a G-NetTrack header row on line 1")
    rows = csv.reader(text, delimiter="\t" if "\t" in text[0] else ",")
    header = [name.strip() for name in next(rows)]
    missing = [name for name in ("Timestamp", column) if name not in header]
    if missing:
        raise GraftError(f"{path}, line 1: expected a header with Timestamp and {column} "
                         f"columns, missing {', '.join(missing)}")
    at_stamp, at_rate = header.index("Timestamp"), header.index(column)
    stamps, kbps, lines = [], [], []
    for row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise GraftError(f"{path}, line {rows.line_num}: expected {len(header)} columns as in "
                             f"the header, got {len(row)}")
        stamp, rate = row[at_stamp].strip(), row[at_rate].strip()
        if stamp in _MISSING or rate in _MISSING:
            continue
        stamps.append(_parse_stamp(path, rows.line_num, stamp))
        kbps.append(_parse_kbps(path, rows.line_num, column, rate))
        lines.append(rows.line_num)
    if not stamps:
        raise GraftError(f"{path}: expected rows with both a Timestamp and a {column}, found none")
    seconds = np.array([(stamp - stamps[0]).total_seconds() for stamp in stamps])
    _require(path, np.array(lines[1:]), np.diff(seconds) >= 0,
             "a Timestamp no earlier than on the row before")
    times, row_second = np.unique(seconds, return_inverse=True)
    mbps = np.bincount(row_second, weights=kbps) / np.bincount(row_second) / 1000
    return Trace(path.name, times, mbps, "gnettrack", direction)


_LOADERS = {"pensieve": load_pensieve, "mahimahi": load_mahimahi, "ghent": load_ghent}


def load_trace(path, format: str = "auto", direction: str = "uplink") -> Trace:
    """Load a trace in any of the formats above, sniffing which one when ``format="auto"``.

    ``direction`` chooses the bitrate column of a G-NetTrack export; the other formats carry a
    single direction, which the loaded trace records.
    """
    if format == "auto":
        format = _detect_format(Path(path))
    if format == "gnettrack":
        return load_gnettrack(path, direction)
    if format not in _LOADERS:
        raise GraftError(f"trace format {format!r}: expected auto, gnettrack or "
                         f"{', '.join(_LOADERS)}")
    return _LOADERS[format](path)


def bundled_names() -> list[str]:
    """The names of the traces that ship with graft_fx (see data/traces/README.md)."""
    return list(_BUNDLED)


def bundled_direction(name: str) -> str:
    """Which way a bundled trace was measured, without loading it: the LTE mahimahi files name
    it (".up", ".down"); the 3G, FCC and Ghent sets measured downloads, stand-ins for an uplink."""
    if name not in _BUNDLED:
        raise GraftError(f"bundled trace {name!r}: expected one of {', '.join(_BUNDLED)}")
    return {".up": "uplink"}.get(Path(_BUNDLED[name][1]).suffix, "downlink")


def bundled(name: str) -> Trace:
    """A trace that ships with graft_fx, by its bundled name."""
    if name not in _BUNDLED:
        raise GraftError(f"bundled trace {name!r}: expected one of {', '.join(_BUNDLED)}")
    folder, file = _BUNDLED[name]
    resource = resources.files(__package__) / "data" / "traces" / folder / file
    with resources.as_file(resource) as path:
        return replace(load_trace(path), name=name)


def _detect_format(path: Path) -> str:
    """Which format a file is in, from its first non-blank line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lineno, line = next(((n, line) for n, line in enumerate(f, 1) if line.strip()), (0, ""))
    if not lineno:
        raise GraftError(f"{path}: empty file, expected a bandwidth trace")
    if "Timestamp" in (name.strip() for name in re.split("[,\t]", line)):
        return "gnettrack"
    fields = line.split()
    if len(fields) == 1 and fields[0].isdigit():
        return "mahimahi"
    if len(fields) in (2, 6) and all(_is_number(field) for field in fields):
        return "pensieve" if len(fields) == 2 else "ghent"
    raise GraftError(f"{path}, line {lineno}: cannot tell the trace format: expected a header "
                     "with a Timestamp column (G-NetTrack), one integer (Mahimahi), 2 numbers "
                     f"(Pensieve) or 6 numbers (Ghent), got {line.strip()!r}")


def _numeric_rows(path: Path, columns: tuple[str, ...], integer: bool = False):
    """The non-blank lines of a whitespace-separated file as floats, and their line numbers."""
    kind = "integer" if integer else "number"
    expected = f"{len(columns)} {kind} column{'s' * (len(columns) > 1)} ({' '.join(columns)})"
    parse = int if integer else float
    rows, lines = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                row = [parse(field) for field in fields]
            except ValueError:
                row = None
            if row is None or len(row) != len(columns):
                raise GraftError(f"{path}, line {lineno}: expected {expected}, "
                                 f"got {line.strip()!r}")
            rows.append(row)
            lines.append(lineno)
    if not rows:
        raise GraftError(f"{path}: empty file, expected lines of {expected}")
    values, lines = np.array(rows, dtype=np.float64), np.array(lines)
    _require(path, lines, np.isfinite(values).all(axis=1), f"{expected}, all finite")
    return values, lines


def _require(path: Path, lines: np.ndarray, ok: np.ndarray, expected: str):
    """Raise naming the first line where ``ok`` is False."""
    bad = np.flatnonzero(~ok)
    if bad.size:
        raise GraftError(f"{path}, line {lines[bad[0]]}: expected {expected}")


def _parse_stamp(path: Path, lineno: int, stamp: str) -> datetime:
    try:
        return datetime.strptime(stamp, _TIMESTAMP)
    except ValueError:
        raise GraftError(f"{path}, line {lineno}: expected a Timestamp like "
                         f"2019.12.16_14.23.32, got {stamp!r}") from None


def _parse_kbps(path: Path, lineno: int, column: str, rate: str) -> float:
    try:
        kbps = float(rate)
        if 0 <= kbps < float("inf"):
            return kbps
    except ValueError:
        pass
    raise GraftError(f"{path}, line {lineno}: expected a non-negative {column} in kbit/s, "
                     f"got {rate!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
