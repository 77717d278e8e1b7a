"""Bucketed batch sizes: pad each row group up to the next size of a short list.

A static-shape executor (a CUDA graph, a graph compiled without dynamic shapes) runs one batch
size per capture. A realigned group sees every mix of its fragments' batch sizes, so it would
capture (or compile) without end. Padding each fragment's rows up to the next *bucket* (1, 2, 4,
8, ...) bounds the shapes it can see to ``len(buckets) ** k`` for k fragments, and the padding
rows are dropped from the outputs. That is exact only where every node treats rows
independently: a padding row must never reach a real row's value (``RealignedModule`` checks).

The price of a padded batch is the latency of its bucketed size, which is what the planner and
the profiles must charge when padding is on.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import GraftError

POWERS_OF_TWO: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""The default buckets; a batch of more rows than the largest runs at its own size."""


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """``buckets`` as a tuple, checked: positive ints, strictly increasing. Raises GraftError."""
    out = tuple(buckets)
    if not out or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in out) \
            or any(a >= b for a, b in zip(out, out[1:])):
        raise GraftError(f"buckets={list(buckets)!r}: expected positive batch sizes in increasing order, "
                         "such as [1, 2, 4, 8]")
    return out


def bucketed(rows: int, buckets: Sequence[int]) -> int:
    """The size a batch of ``rows`` rows is padded to: the smallest bucket of at least ``rows``;
    ``rows`` itself when it is 0 (nothing runs) or more than the largest bucket."""
    if rows == 0:
        return 0
    return next((b for b in buckets if b >= rows), rows)
