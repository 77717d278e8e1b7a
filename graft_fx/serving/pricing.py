"""Pricing: what one batch of a realigned group costs on a latency profile.

A group's batch costs what its mix costs (`Profile.batch_s`): the realigned module runs piece i
on the rows of every request cut at or before i, so a batch's latency is the sum over its pieces
of each piece's latency at the rows that reach it, at the group's share. `group_latency` turns
that rule into the `batching.Latency` a `BatchQueue` plans its batches with. Both clocks price
batches with it: the simulator's virtual clock takes every batch to last exactly the profile's
latency for its mix, and the runtime's wall clock gives the same prices to the batching policy.

**Padded batching** (``buckets``, `graft_fx.buckets`): a realigned module that pads each present
fragment's rows up to the next bucket runs every piece on the padded rows, so a batch whose
fragment f has ``n_f`` requests costs what ``bucketed(n_f)`` rows of each f cost. The batching
policy caps a batch at the profile's largest measured batch of *requests*; padded, a batch of
several fragments can reach more rows than that (``{f: 5, g: 3}`` pads to 8 + 4), and such rows
are priced by the profile's own rule for large batches, the last measured slope
(`profiles.Profile.table`), as `Profile.batch_s` prices any large batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..buckets import bucketed, check_buckets
from .batching import Latency
from .profiles import Profile
from .requests import Request


def group_latency(profile: Profile, fragments: Sequence[int], share: float,
                  buckets: Sequence[int] | None = None) -> Latency:
    """A realigned group's batch latency in seconds at ``share`` for batches of at most
    ``profile.max_batch`` requests of ``fragments``: piece i runs on the rows of every request
    cut at or before i (`Profile.batch_s`, specialised to plain lists for the simulator's loop).

    With ``buckets`` each fragment's requests count as ``bucketed(n, buckets)`` rows, the rows a
    padded realigned module runs (see the module docstring); None prices the rows as they are.
    Raises GraftError for buckets that `check_buckets` refuses.
    """
    first = min(fragments)
    most = profile.max_batch
    if buckets is None:
        padded = list(range(most + 1))
        rows_at_most = most
    else:
        buckets = check_buckets(buckets)
        padded = [bucketed(n, buckets) for n in range(most + 1)]
        rows_at_most = max(most, min(len(fragments), most) * padded[most])
    if len(fragments) == 1:  # every batch is uniform: its latency depends on its size alone
        by_rows = profile.table(share, rows_at_most)[first:].sum(axis=0).tolist()
        by_size = [by_rows[rows] for rows in padded]
        return lambda batch: by_size[len(batch)]
    table = profile.table(share, rows_at_most)[first:].tolist()
    pieces = len(table)

    def latency(batch: Sequence[Request]) -> float:
        counts = [0] * pieces
        for r in batch:
            counts[r.fragment - first] += 1
        total, n = 0.0, 0
        for piece, k in zip(table, counts):
            n += padded[k]
            total += piece[n]
        return total

    return latency
