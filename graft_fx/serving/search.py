"""The least share: the cheapest plan whose replay answers the target of a stream on time.

A plan is made for the per-type rates of the stream's attainable requests scaled by a headroom
factor ``alpha`` and for each type's budget at a quantile ``q`` of its requests' budgets
(`demands`). The planner's latency rule is a worst case (a request that arrives just after a batch
starts), while the EDF queue serves urgent requests first, so planning for the very tightest
budgets buys more share than the target needs; and the planner sizes expected batches, so the
queueing tail may need headroom. Whether a plan's simulation reaches the target need not grow with
``alpha`` (partitions are coarse, and time sharing is a greedy packing), so nothing bisects on it:
every ``q`` in ``quantiles`` (the 1st, 10th and 50th percentiles, `QUANTILES`) and every ``alpha``
in `ALPHAS` (1 to 64, 9% apart) is planned, and the distinct plans are simulated cheapest first
until one answers on time at least ``target`` of the *attainable* requests; among the plans of
that same share, the one with the best attainment wins (`least_share`). ``alpha`` never goes below
1: every plan keeps up with the load it observed. Attainable requests are those whose budget
covers their fragment's latency alone on the whole accelerator: the network left the rest no time
at all, graft and per-fragment lose them alike (full-model's phones send other requests, with
their own count), no plan is sized for them, and ``slo_attainment`` counts them.

**Re-planning** (``replan_s``): instead of one plan for the whole run, a `Replanner` looks at the
rates of each window of ``replan_s`` seconds and re-plans for the next window when they drifted
(`epochs_for`); the candidate is then that sequence of plans, replayed as `replay.run_epochs`
says.

Shares are the partitions the accelerator can make (`partitions.Partitioning`: by default green
contexts of the profile's device, 8-SM steps on an H200), the same for every policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import GraftError
from .deployment import deploy
from .partitions import Partitioning, for_device
from .planner import Demand, Replanner, least_budget, plan
from .profiles import Profile
from .replay import Epoch, Run, run_epochs
from .stream import Stream

QUANTILES = (0.01, 0.1, 0.5)  # budget quantiles the plans aim at, from the tightest to the median
MAX_DOUBLINGS = 6  # headroom searched from 1 to 64 times the observed load


def demands(stream: Stream, profile: Profile, quantile: float, alpha: float = 1.0,
            buckets: Sequence[int] | None = None) -> list[Demand]:
    """Per fragment type: the rate of its attainable requests times ``alpha``, and the
    ``quantile`` of their budgets, raised to the least budget the planner can plan for (types with
    no attainable request are left out: no share can serve them). Requests that no server could
    answer in time are not planned for: they would only buy share for drops."""
    rates = stream.rates(attainable_only=True)
    return [Demand(f, rates[f] * alpha, max(float(np.quantile(b, quantile)), least_budget(profile, f, buckets)))
            for f, b in stream.attainable_budgets.items()]


def epochs_for(stream: Stream, profile: Profile, quantile: float, alpha: float, realign: bool,
               partitioning: Partitioning, replan_s: float | None,
               buckets: Sequence[int] | None = None) -> list[Epoch]:
    """The plans for one (budget quantile, headroom): one for the whole stream, or, every
    ``replan_s`` seconds, what a `Replanner` makes of the rates that arrived in the window
    before (the first window plans on its own rates, as a server would from yesterday's).

    Every type the stream has budgets for stays in every plan, at one request per window at
    least: an instance is not torn down because its type was quiet for one window, under either
    policy.
    """
    if replan_s is None:
        return [Epoch(0.0, plan(profile, demands(stream, profile, quantile, alpha, buckets), realign, partitioning,
                                buckets=buckets))]
    budgets = {d.fragment: d.budget_s for d in demands(stream, profile, quantile, buckets=buckets)}
    replanner = Replanner(profile, budgets, realign=realign, partitioning=partitioning, buckets=buckets)
    arrivals, fragments = stream.arrival_s, stream.fragment
    windows = max(1, math.ceil(max(arrivals.max(initial=0.0), stream.duration_s) / replan_s))
    epochs: list[Epoch] = []
    for w in range(windows):
        seen = max(w - 1, 0) * replan_s
        window = fragments[(arrivals >= seen) & (arrivals < seen + replan_s)]
        rates = {f: max(int(np.sum(window == f)), 1) / replan_s * alpha for f in budgets}
        if replanner.observe(rates) is not None or not epochs:
            epochs.append(Epoch(w * replan_s, replanner.plan))
    return epochs


# Headroom factors the search scans: 1 to 64 times the observed load, about 9% apart.
ALPHAS = tuple(float(a) for a in np.geomspace(1.0, 2.0 ** MAX_DOUBLINGS, 8 * MAX_DOUBLINGS + 1))


def least_share(stream: Stream, profile: Profile, realign: bool, target: float,
                quantiles: Sequence[float] = QUANTILES, partitioning: Partitioning | None = None,
                replan_s: float | None = None, buckets: Sequence[int] | None = None) -> tuple[Run | None, list[Run]]:
    """The run with the least total share that answers ``target`` of the attainable requests on
    time, and every run simulated (see the module docstring).

    Every (budget quantile, headroom) on the grid is planned (plans are cheap); the distinct plans
    are simulated in order of total share until one reaches the target, and then those of the same
    share, the tie going to the best attainment. Nothing assumes that success grows with the
    headroom: a plan is skipped only when one no dearer has already succeeded. With ``buckets``
    batches are padded: planned (`planner.plan`) and replayed (`replay.run_epochs`) at their
    padded rows.
    """
    need = target * int(stream.attainable.sum())
    runs: list[Run] = []
    if need == 0:
        return None, runs  # the network leaves no request any time: no share can help
    partitioning = partitioning or for_device(profile.device)
    candidates = _candidates(stream, profile, realign, quantiles, partitioning, replan_s, buckets)
    best, best_on_time = None, -1
    for share, epochs in candidates:
        if best is not None and share > best.total_share + 1e-12:
            break
        run = run_epochs(stream, profile, epochs, buckets)
        runs.append(run)
        on_time = int((run.on_time(stream) & stream.attainable).sum())
        if on_time >= need and on_time > best_on_time:
            best, best_on_time = run, on_time
    return best, runs


def _candidates(stream: Stream, profile: Profile, realign: bool, quantiles: Sequence[float],
                partitioning: Partitioning, replan_s: float | None,
                buckets: Sequence[int] | None = None) -> list[tuple[float, list[Epoch]]]:
    """The distinct plans (epoch lists) of every (quantile, headroom), by total share; plans the
    profile cannot make (more load than it can plan for) and plans that do not fit on GPUs
    (`deployment.deploy`: a partition needing more memory than a GPU has) are left out.

    With ``realign`` the per-fragment plans are candidates too: one instance per type is a
    realigned deployment of singleton groups, and the planner, which sizes expected batches,
    cannot tell which of two plans of one share the queues will serve better. So graft's least
    share is never above per-fragment's on the same stream.
    """
    seen, out = set(), []
    for mode in dict.fromkeys((realign, False)):
        for q in quantiles:
            for alpha in ALPHAS:
                try:
                    epochs = epochs_for(stream, profile, q, alpha, mode, partitioning, replan_s, buckets)
                except GraftError:
                    break  # more load than the profile can plan for, and more headroom only adds load
                key = tuple((e.start_s, e.plan) for e in epochs)
                if key not in seen and _deployable(epochs, profile):
                    seen.add(key)
                    out.append((Run(tuple(epochs), np.zeros(0), stream.end_s).total_share, epochs))
    out.sort(key=lambda c: c[0])
    return out


def _deployable(epochs: Sequence[Epoch], profile: Profile) -> bool:
    """Whether every epoch's plan packs onto GPUs (a partition may need more memory than a GPU has)."""
    try:
        for e in epochs:
            deploy(e.plan, profile)
    except GraftError:
        return False
    return True
