"""One scenario over several seeds: each policy's figures as medians with confidence intervals.

A seed draws the phones (their speeds and trace offsets) and their arrivals, so one seed's least
share is one sample. `over_seeds` simulates the scenario once per seed and summarises each policy
by the median and the order-statistic interval of `stats.median_ci`. The ratio to graft is taken
per seed (both policies served the same stream) and then summarised, so it is a paired figure,
not a ratio of medians.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import GraftError
from .results import PolicyResult, combine
from .simulator import POLICIES, Scenario, simulate
from .stats import Median, median_ci
from .stream import Stream, make_stream

MIN_DURATION_BUDGETS = 10  # a run lasts at least this many times its largest server budget


@dataclass(frozen=True)
class Summary:
    """One policy over ``len(results)`` seeds. ``share``, ``gpus``, ``vs_graft`` and
    ``attainable_attainment`` are over the seeds where it reached the target (``reached`` of
    them); None where it never did (``vs_graft``: where graft did not either)."""

    name: str
    share: Median | None
    gpus: Median | None
    vs_graft: Median | None
    attainable_attainment: Median | None
    reached: int
    results: tuple[PolicyResult, ...]

    def to_json(self) -> dict:
        def m(x):
            return None if x is None else x.to_json()
        return {"name": self.name, "seeds": len(self.results), "reached": self.reached, "share": m(self.share),
                "gpus": m(self.gpus), "vs_graft": m(self.vs_graft),
                "attainable_attainment": m(self.attainable_attainment)}


def check_duration(scenario: Scenario) -> None:
    """Raise GraftError when the run is shorter than `MIN_DURATION_BUDGETS` times the largest
    SLO of its clients (a server budget is at most the SLO): a shorter run lets a server that
    falls behind look on time while its budgets absorb the backlog."""
    slo = max((c.slo_s for c in scenario.clients), default=0.0)
    if scenario.duration_s < MIN_DURATION_BUDGETS * slo:
        raise GraftError(f"a run of {scenario.duration_s:g} s with an SLO of {slo * 1e3:g} ms: expected at least "
                         f"{MIN_DURATION_BUDGETS} times the SLO ({MIN_DURATION_BUDGETS * slo:g} s)")


def over_seeds(make: Callable[[int], Scenario | Sequence[Scenario]], seeds: Sequence[int],
               policies: Sequence[str] = POLICIES,
               progress: Callable[[str], None] | None = None) -> tuple[list[Summary], list[Stream]]:
    """Simulate ``make(seed)`` for every seed and summarise each policy (see the module
    docstring); also the first seed's request streams, for reporting.

    ``make`` may return several scenarios, one per model served at once: each is simulated on its
    own, and a policy's figures for the seed are the models' together (`results.combine`: the
    shares add up, the plans pack onto one set of GPUs). ``progress`` is told each policy's name
    as its simulation of one model for one seed finishes. Raises GraftError for no seeds or a run
    shorter than `check_duration` allows.
    """
    if not seeds:
        raise GraftError("no seeds: expected at least one")
    per_seed, first = [], None
    for seed in seeds:
        made = make(seed)
        scenarios = [made] if isinstance(made, Scenario) else list(made)
        parts, streams = [], []
        for scenario in scenarios:
            check_duration(scenario)
            streams.append(make_stream(scenario))
            parts.append({r.name: r for r in simulate(scenario, policies, progress, streams[-1])})
        first = first or streams
        per_seed.append({name: combine([p[name] for p in parts], [sc.profile for sc in scenarios])
                         for name in policies})
    summaries = [_summary(name, [s[name] for s in per_seed], [s.get("graft") for s in per_seed])
                 for name in policies]
    return summaries, first


def _summary(name: str, results: list[PolicyResult], graft: list[PolicyResult | None]) -> Summary:
    reached = [r for r in results if r.share is not None]

    def med(values):
        values = [v for v in values if v is not None]
        return median_ci(values) if values else None

    ratios = [r.share / g.share for r, g in zip(results, graft)
              if g is not None and r.share is not None and g.share]
    return Summary(name, med([r.share for r in reached]), med([r.gpus for r in reached]), med(ratios),
                   med([r.attainable_attainment for r in reached]), len(reached), tuple(results))
