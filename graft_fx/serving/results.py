"""The figures of a policy: what a replay of a stream, or several models' replays, amount to.

`result` reads one policy's figures off the run the least-share search chose (`search.least_share`):
its share, the GPUs its plans pack onto, how many requests were answered on time, of all and of
the attainable ones, goodput, and end-to-end latency percentiles. A request's end-to-end latency
runs from the phone starting the inference to the answer, so it includes the phone's time on the
head and on the upload. `combine` adds up several models' figures for one policy when they are
served at once, packing their plans onto one set of GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .deployment import Deployment, deploy, deploy_all
from .planner import Plan
from .profiles import Profile
from .replay import Run
from .stream import Stream


@dataclass(frozen=True)
class PolicyResult:
    """One policy's figures; ``share`` is None when no searched share reached the target, and
    the latency figures are None for ``bound`` (not simulated) or when nothing was answered.

    ``slo_attainment`` is over all requests, ``attainable_attainment`` over the attainable ones
    (what the target is judged on); ``gpus`` is how many whole devices the plan's partitions pack
    onto (`deployment.deploy`), and ``extrapolated`` whether some group's share lies below the
    profile's smallest measured one.
    """

    name: str
    share: float | None
    slo_attainment: float | None
    goodput_rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    dropped: int | None
    requests: int
    attainable: int  # requests whose budget covers their fragment alone on a whole accelerator
    attainable_attainment: float | None = None
    gpus: int | None = None
    extrapolated: bool = False
    latencies_ms: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    plan: Plan | None = field(repr=False, default=None)
    deployment: Deployment | None = field(repr=False, default=None)
    searched: tuple[tuple[float, float], ...] = ()  # (total share, attainable fraction on time)
    model: str = ""
    parts: tuple[PolicyResult, ...] = field(repr=False, default=())  # per model, when `combine`d

    def to_json(self) -> dict:
        """The figures, and ``searched``: the (total share, fraction of attainable requests on
        time) of every plan the search simulated, cheapest first."""
        keys = ("name", "share", "gpus", "slo_attainment", "attainable_attainment", "goodput_rps", "p50_ms",
                "p99_ms", "dropped", "requests", "attainable", "extrapolated")
        return {**{k: getattr(self, k) for k in keys},
                "searched": [[round(share, 4), round(on_time, 4)] for share, on_time in self.searched]}


def result(name: str, stream: Stream, best: Run | None, runs: Sequence[Run], profile: Profile) -> PolicyResult:
    """The figures of ``best`` (or, if none reached the target, of the run with the most share)."""
    attainable = int(stream.attainable.sum())
    searched = tuple(sorted((r.total_share, float((r.on_time(stream) & stream.attainable).sum() / max(attainable, 1)))
                            for r in runs))
    shown = best or max(runs, key=lambda r: r.total_share, default=None)
    n = len(stream.requests)
    if shown is None:
        return PolicyResult(name, None, None, None, None, None, None, n, attainable, searched=searched,
                            model=profile.model)
    on_time = shown.on_time(stream)
    answered = ~np.isnan(shown.finish_s)
    latencies_ms = (shown.finish_s[answered] - stream.send_s[answered]) * 1e3
    p50, p99 = (float(np.percentile(latencies_ms, q)) for q in (50, 99)) if answered.any() else (None, None)
    # the GPUs to buy are the most that any epoch's plan packs onto
    deployment = max((deploy(e.plan, profile) for e in shown.epochs), key=lambda d: (d.gpus, d.total_share))
    return PolicyResult(name, shown.total_share if best else None, float(on_time.mean()) if n else 1.0,
                        float(on_time.sum() / stream.duration_s), p50, p99, int(n - answered.sum()), n,
                        attainable, float((on_time & stream.attainable).sum() / max(attainable, 1)),
                        deployment.gpus if best else None, any(g.extrapolated for e in shown.epochs
                                                               for g in e.plan.groups),
                        np.sort(latencies_ms), shown.plan, deployment, searched, profile.model)


def combine(parts: Sequence[PolicyResult], profiles: Sequence[Profile]) -> PolicyResult:
    """One policy's results for several models served at once (``parts[i]`` on ``profiles[i]``):
    shares, requests and goodput add up, attainments are over all requests, latency percentiles
    over all answered ones, and the plans are packed together onto one set of GPUs
    (`deployment.deploy_all`). A single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    reached = all(p.share is not None for p in parts)
    simulated = all(p.slo_attainment is not None for p in parts)
    latencies = np.sort(np.concatenate([p.latencies_ms for p in parts]))
    n, ok = sum(p.requests for p in parts), sum(p.attainable for p in parts)

    def total(attr):
        return sum(getattr(p, attr) for p in parts) if all(getattr(p, attr) is not None for p in parts) else None

    def weighted(attr, weight):
        if not simulated:
            return None
        return sum(getattr(p, attr) * getattr(p, weight) for p in parts) / max(sum(getattr(p, weight) for p in parts), 1)

    deployment = deploy_all([(p.plan, f) for p, f in zip(parts, profiles)]) if reached and all(
        p.plan is not None for p in parts) else None
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if len(latencies) else (None, None)
    return PolicyResult(parts[0].name, total("share") if reached else None, weighted("slo_attainment", "requests"),
                        total("goodput_rps"), p50 if simulated else None, p99 if simulated else None,
                        total("dropped"), n, ok, weighted("attainable_attainment", "attainable"),
                        deployment.gpus if deployment else None, any(p.extrapolated for p in parts), latencies,
                        None, deployment, model="+".join(p.model for p in parts), parts=tuple(parts))
