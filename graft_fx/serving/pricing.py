"""Pricing: what one batch of a realigned group costs on a latency profile.

A group's batch costs what its mix costs (`Profile.batch_s`): the realigned module runs piece i
on the rows of every request cut at or before i, so a batch's latency is the sum over its pieces
of each piece's latency at the rows that reach it, at the group's share. `group_latency` turns
that rule into the `batching.Latency` a `BatchQueue` plans its batches with. Both clocks price
batches with it: the simulator's virtual clock takes every batch to last exactly the profile's
latency for its mix, and the runtime's wall clock gives the same prices to the batching policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from .batching import Latency
from .profiles import Profile
from .requests import Request


def group_latency(profile: Profile, fragments: Sequence[int], share: float) -> Latency:
    """A realigned group's batch latency at ``share`` for batches of requests of ``fragments``:
    piece i runs on the rows of every request cut at or before i (`Profile.batch_s`,
    specialised to plain lists for the simulator's loop)."""
    first = min(fragments)
    if len(fragments) == 1:  # every batch is uniform: its latency depends on its size alone
        by_size = profile.table(share)[first:].sum(axis=0).tolist()
        return lambda batch: by_size[len(batch)]
    table = profile.table(share)[first:].tolist()
    pieces = len(table)

    def latency(batch: Sequence[Request]) -> float:
        rows = [0] * pieces
        for r in batch:
            rows[r.fragment - first] += 1
        total, n = 0.0, 0
        for piece, k in zip(table, rows):
            n += k
            total += piece[n]
        return total

    return latency
