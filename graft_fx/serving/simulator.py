"""Trace-driven simulation: one request stream, every serving policy, the least GPU each needs.

A run starts from a `Scenario`: a model's latency `Profile`, its `ModelCosts`, the clients and how
long they send. The clients choose their cuts among the profile's fragment types as phones do
(`stream.make_stream`), and that one request stream is replayed through each policy on the same
profile. With ``private_input`` no phone uploads the raw input, so phones choose among the
activation cuts only: the regime of many fragment types.

- ``graft``: merge (one queue per group of types), group and re-align: the `planner` partitions
  the types into realigned groups, each with its share, replicas and duty cycle. A group's batch
  costs what its mix costs (`Profile.batch_s`, `pricing.group_latency`).
- ``per-fragment``: one instance per fragment type, each with its own fine-grained share and
  dynamic batching (the GSLICE / Triton style): the same planner with re-alignment off.
- ``full-model``: every client uploads its raw input (cut 0), so all requests batch uniformly;
  its own request stream, since the uploads are different.
- ``bound``: a fluid lower bound on the share of the ``graft`` stream: every row of every piece of
  every attainable request at the best batch efficiency the profile knows (`planner.fluid_bound`).
  It is not simulated. Since every plan keeps up with its load, no policy's share is below it.

**Padded batching** (``Scenario.buckets``): the server's realigned modules pad each fragment's
rows up to the next bucket (`graft_fx.buckets`), so the planner sizes groups and the virtual
clock prices batches at their padded rows (`planner.plan`, `pricing.group_latency`), under
``graft``, ``per-fragment`` and ``full-model`` alike. ``bound`` stays unpadded: padding only adds
rows, so the bound of the unpadded rows is still below every padded plan.

Each simulated policy's share is the least that answers ``target`` of the attainable requests on
time (`search.least_share`, which explains the search, and with ``replan_s`` re-plans as the rates
drift); every candidate plan is replayed on the virtual clock (`replay.run_epochs`, one
`BatchQueue` per replica, requests sent to replicas by `routing.Router`), and the chosen run's
figures are read off by `results.result`.

The pieces live in their own modules because the wall-clock runtime uses them too:

    stream     the request stream in the profile's terms (`Stream`, `make_stream`)
    pricing    what a batch of a group costs on a profile (`group_latency`)
    routing    which replica of which group receives a request (`Router`)
    replay     a stream served by plans on the virtual clock (`Epoch`, `Run`, `run_epochs`)
    search     the least share that reaches the target (`least_share`)
    results    the figures of a policy (`PolicyResult`, `result`, `combine`)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import GraftError
from .partitions import Partitioning
from .planner import check_buckets_fit, fluid_bound
from .profiles import Profile
from .results import PolicyResult, result
from .search import QUANTILES, least_share
from .stream import Stream, make_stream
from .workload import Client, ModelCosts

POLICIES = ("graft", "per-fragment", "full-model", "bound")
Progress = Callable[[str], None]  # told the name of each simulation as it finishes


@dataclass(frozen=True)
class Scenario:
    """What one `simulate` call replays: ``clients`` sending for ``duration_s`` seconds to a
    server whose latencies are ``profile``; ``costs`` are the model's cut points and FLOPs.
    ``buckets`` (ascending batch sizes, such as `graft_fx.buckets.POWERS_OF_TWO`) pads every
    batch's rows per fragment ("Padded batching"); None runs them as they are. Raises GraftError
    for bad settings, among them buckets that `planner.check_buckets_fit` refuses (a first bucket
    above the profile's largest measured batch, which no policy could plan for)."""

    profile: Profile
    costs: ModelCosts
    clients: tuple[Client, ...]
    duration_s: float
    seed: int = 0
    target: float = 0.99
    quantiles: tuple[float, ...] = QUANTILES
    partitioning: Partitioning | None = None  # default: green contexts of the profile's device
    replan_s: float | None = None  # re-plan every so many seconds on the rates just seen
    private_input: bool = False  # phones never upload the raw input (cut 0), except under full-model
    buckets: tuple[int, ...] | None = None

    def __post_init__(self):
        if not 0 < self.target <= 1 or not self.quantiles or not all(0 <= q < 1 for q in self.quantiles):
            raise GraftError(f"target {self.target} and budget quantiles {self.quantiles}: "
                             f"expected 0 < target <= 1 and some quantiles in [0, 1)")
        if self.replan_s is not None and not self.replan_s > 0:
            raise GraftError(f"replan_s {self.replan_s}: expected a positive number of seconds, or None")
        object.__setattr__(self, "buckets", check_buckets_fit(self.profile, self.buckets))


def simulate(scenario: Scenario, policies: Iterable[str] = POLICIES,
             progress: Progress | None = None, stream: Stream | None = None) -> list[PolicyResult]:
    """Every policy in ``policies`` on the scenario's request stream (``stream``, if the caller
    made it already with `make_stream`); see the module docstring."""
    policies = list(policies)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise GraftError(f"unknown policies {unknown}: expected some of {list(POLICIES)}")
    stream = stream or make_stream(scenario)
    results = []
    for name in policies:
        if name == "bound":
            results.append(PolicyResult("bound", fluid_bound(scenario.profile, stream.rates(attainable_only=True)),
                                        None, None, None, None, None, len(stream.requests),
                                        int(stream.attainable.sum()), model=scenario.profile.model))
        else:
            policy_stream = make_stream(scenario, full_model=True) if name == "full-model" else stream
            best, runs = least_share(policy_stream, scenario.profile, name == "graft", scenario.target,
                                     scenario.quantiles, scenario.partitioning, scenario.replan_s, scenario.buckets)
            results.append(result(name, policy_stream, best, runs, scenario.profile))
        if progress:
            progress(name)
    return results
