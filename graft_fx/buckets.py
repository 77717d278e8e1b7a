"""Bucketed batch sizes: pad each row group up to the next size of a short list.

A static-shape executor (a CUDA graph, a graph compiled without dynamic shapes) runs one batch
size per capture. A realigned group sees every mix of its fragments' batch sizes, so it would
capture (or compile) without end. Padding each fragment's rows up to the next *bucket* (1, 2, 4,
8, ...) bounds the shapes it can see to ``len(buckets) ** k`` for k fragments, and the padding
rows are dropped from the outputs. That is exact only where every node treats rows
independently: a padding row must never reach a real row's value. ``padding_refusal`` says where
it would (``realign(..., buckets=...)`` refuses such fragments), ``pad_rows`` pads one input and
``output_layouts`` says where each output keeps the rows to take back.

The price of a padded batch is the latency of its bucketed size, which is what the planner and
the profiles must charge when padding is on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from numbers import Integral

import torch
import torch.fx as fx

from .analysis import Analysis
from .capture import layer_name
from .errors import GraftError
from .rows import Layout
from .separable import Role, draws_random

POWERS_OF_TWO: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""The default buckets; a batch of more rows than the largest runs at its own size."""


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """``buckets`` as a tuple of plain ints, checked: positive, strictly increasing. Raises GraftError.

    Any ordered collection of integers will do (a list, a tuple, a range, a numpy array);
    ``numbers.Integral`` values such as numpy ints come back as Python ints, bools are refused.
    A string (``"1,2,4"``: the CLI's syntax, which ``graft_fx.cli`` parses), an unordered set or
    mapping, and a lone number (``buckets=4``) are refused as a whole, with what to pass instead,
    rather than taken apart character by character or failing with a bare TypeError.
    """
    if isinstance(buckets, (str, bytes, AbstractSet, Mapping)) or not isinstance(buckets, Iterable):
        raise GraftError(f"buckets={buckets!r} ({type(buckets).__name__}): expected a sequence of batch sizes "
                         "such as [1, 2, 4, 8] (the CLI's pow2 is graft_fx.buckets.POWERS_OF_TWO)")
    out = tuple(buckets)
    why = _bucket_problem(out)
    if why:
        shown = [int(b) if isinstance(b, Integral) and not isinstance(b, bool) else b for b in out]
        raise GraftError(f"buckets={shown!r}: expected positive batch sizes in increasing order, "
                         f"such as [1, 2, 4, 8]; {why}")
    return tuple(int(b) for b in out)


def _bucket_problem(buckets: tuple) -> str | None:
    """What makes ``buckets`` no bucket list, or None when it is one."""
    if not buckets:
        return "the list is empty"
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, Integral):
            return f"{b!r} is a {type(b).__name__}, not an integer"
        if b < 1:
            return f"{b} is below 1"
    for a, b in zip(buckets, buckets[1:]):
        if a >= b:
            return f"{int(b)} does not exceed the {int(a)} before it"
    return None


def bucketed(rows: int, buckets: Sequence[int]) -> int:
    """The size a batch of ``rows`` rows is padded to: the smallest bucket of at least ``rows``;
    ``rows`` itself when it is 0 (nothing runs) or more than the largest bucket."""
    if rows == 0:
        return 0
    return next((b for b in buckets if b >= rows), rows)


@functools.lru_cache(maxsize=256)
def most_rows(requests: int, buckets: tuple[int, ...], members: int) -> int:
    """The most rows a batch of at most ``requests`` requests of ``members`` fragment types can
    hold once each type's rows are padded to ``buckets``: the largest sum of ``bucketed(n_i)``
    over ``n_1 + ... + n_members <= requests`` (a knapsack over the split, O(members x
    requests^2)). With powers of two it is below ``2 * requests``; it is what a device must hold
    activations for, where a batching policy caps requests, not rows."""
    best = [0] * (requests + 1)  # best[r]: the most padded rows of r requests over the types so far
    for _ in range(members):
        best = [max(bucketed(n, buckets) + best[r - n] for n in range(r + 1)) for r in range(requests + 1)]
    return best[requests]


# --- padding a realigned module's fragments ---------------------------------------------------


def padding_refusal(analysis: Analysis) -> str | None:
    """Why padding ``analysis``'s rows would not be exact, or None when it is.

    Padding appends copies of a real row to a fragment's batch and drops the rows it appended
    from the outputs; the real rows' outputs stay as they were only where no node lets one row
    reach another. So it refuses, naming the first offending node in graph order:

    * a node that draws random numbers (dropout in training mode, ``torch.rand_like``): the
      padding rows would draw from the random stream too, so the real rows would get other
      draws than they get unpadded under the same seed, and no check could tell;
    * a node that is not batch-separable (role PRIVATE: a reduction over the batch, an op outside
      the rule table) or runs per fragment on the whole batch (role PRIVATE_ROWS: batch norm with
      batch statistics, softmax over the batch, the batch size used as a value), whose real rows
      would see the padding rows or the padded batch size;
    * an output computed from the batch size (``x.shape[0]``), which would report the padded size;
    * an update of the fragment's own state (``Analysis.state``: a train-mode batch norm's running
      statistics, a counter buffer), which would take in the padding rows.
    """
    for node in analysis.nodes:
        verdict = analysis.verdicts[node]
        if draws_random(node):
            return (f"{layer_name(node)} [{node.name}] draws random numbers: padding rows would draw from "
                    "the random stream too, so the real rows would not get the draws they get unpadded")
        if verdict.role in (Role.PRIVATE, Role.PRIVATE_ROWS):
            return (f"{layer_name(node)} [{node.name}] is not batch-separable ({verdict.reason or verdict.role.value}), "
                    "so padding rows would reach the real rows")
    for i, leaf in enumerate(analysis.captured.out_leaves):
        if isinstance(leaf, fx.Node) and analysis.verdicts[leaf].role is Role.FOLDED \
                and analysis.captured.batch in getattr(analysis.facts[leaf].scalar, "free_symbols", ()):
            return f"its output {i} ({leaf.name}) is computed from the batch size, which padding changes"
    if analysis.state:
        return (f"it updates its buffer {next(iter(analysis.state))!r} in place, and the padding rows "
                "would enter the update")
    return None


def output_layouts(analysis: Analysis) -> list[Layout | None]:
    """Where each output leaf of a fragment holds its rows (``Captured.out_leaves`` order), or
    None for a leaf without rows (a constant, a plain value). Call it on a fragment that
    ``padding_refusal`` accepts; raises GraftError for an output whose rows have no single
    ``rows.Layout``."""
    layouts: list[Layout | None] = []
    for i, leaf in enumerate(analysis.captured.out_leaves):
        verdict = analysis.verdicts[leaf] if isinstance(leaf, fx.Node) else None
        if verdict is None or verdict.role in (Role.CONST, Role.FOLDED):
            layouts.append(None)
        elif isinstance(verdict.layout, Layout):
            layouts.append(verdict.layout)
        else:
            raise GraftError(f"{analysis.captured.name}: output {i} ({leaf.name}) holds its rows as "
                             f"{verdict.layout!r}, not as one batch dim, so its padding rows cannot be dropped")
    return layouts


def written_inputs(analysis: Analysis) -> list[int]:
    """The positions of the inputs that a fragment writes into in place (a tail whose first op
    is ``relu_``): a padded copy takes those writes, which must be copied back."""
    placeholders = analysis.captured.placeholders
    return sorted({placeholders.index(n.args[0]) for n in analysis.nodes
                   if analysis.verdicts[n].role is Role.WRITE and n.args[0] in placeholders})


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` (batch in dim 0, ``n >= 1`` rows) with copies of its row 0 appended up to ``rows``
    rows; ``t`` itself when it has that many already. Repeating a real row, not zeros, keeps
    every padding row a value the fragment was built for: no division by zero, no log of 0, no
    NaN or inf that a later op could spread."""
    extra = rows - t.shape[0]
    if extra <= 0:
        return t
    return torch.cat([t, t[:1].expand(extra, *t.shape[1:])])
