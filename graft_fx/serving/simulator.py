"""Trace-driven simulation: one request stream, every serving policy, the least GPU each needs.

A run starts from a `Scenario`: a model's latency `Profile`, its `ModelCosts`, the clients and how
long they send. The clients choose their cuts among the profile's fragment types as a
Neurosurgeon-style phone does (`workload.generate`, with the profile's whole-accelerator latency
at batch 1 as the expected server time; every phone offloads, none runs the whole model itself),
and that one request stream is replayed through each policy on the same profile. With
``private_input`` no phone uploads the raw input (privacy-preserving split inference: the image
never leaves the phone), so phones choose among the activation cuts only; that is the regime of
many fragment types, since an encoded image (a 16 kB JPEG) is smaller than most activations:

- ``graft``: merge (one queue per group of types), group and re-align: the `planner` partitions
  the types into realigned groups, each with its share, replicas and duty cycle. A group's batch
  costs what its mix costs (`Profile.batch_s`).
- ``per-fragment``: one instance per fragment type, each with its own fine-grained share and
  dynamic batching (the GSLICE / Triton style): the same planner with re-alignment off.
- ``full-model``: every client uploads its raw input (cut 0), so all requests batch uniformly;
  its own request stream, since the uploads are different.
- ``bound``: a fluid lower bound on the share of the ``graft`` stream: every row of every piece of
  every attainable request at the best batch efficiency the profile knows (`planner.fluid_bound`).
  It is not simulated. Since every plan keeps up with its load, no policy's share is below it.

Each instance (one replica of one group) is a `BatchQueue` on its plan's partition, served by
`run_offline` when it has the partition to itself and by `run_shared` when several groups take
turns on it (time sharing); a group's requests go to its replicas in turn, in arrival order.

**Re-planning** (``replan_s``): instead of one plan for the whole run, a `Replanner` looks at the
rates of each window of ``replan_s`` seconds and re-plans for the next window when they drifted
(`epochs_for`); each request is served by the plan in force when it arrives, an instance drains
its own queue when its plan is replaced, and a policy's share is the time average of its plans'.
Instances on separate shares do not slow each other (SM partitions do; memory bandwidth is shared
on a real GPU, which the profile's per-share measurements include only for one tenant at a time).
Every batch takes exactly the profile's latency for its mix, so a request is answered on time or
dropped; a request's end-to-end latency runs from the phone starting the inference to the answer.

**The least share.** A plan is made for the per-type rates of the stream's attainable requests
scaled by a headroom factor ``alpha`` and for each type's budget at a quantile ``q`` of its
requests' budgets. The planner's latency rule is a worst case (a request that arrives just after
a batch starts), while the EDF queue serves urgent requests first, so planning for the very
tightest budgets buys more share than the target needs; and the planner sizes expected batches,
so the queueing tail may need headroom. Whether a plan's simulation reaches the target need not
grow with ``alpha`` (partitions are coarse, and time sharing is a greedy packing), so nothing
bisects on it: every ``q`` in ``quantiles`` (the 1st, 10th and 50th percentiles) and every
``alpha`` in `ALPHAS` (1 to 64, 9% apart) is planned, and the distinct plans are simulated
cheapest first until one answers on time at least ``target`` of the *attainable* requests; among
the plans of that same share, the one with the best attainment wins. ``alpha`` never goes below
1: every plan keeps up with the load it observed. Attainable requests are those whose budget
covers their fragment's latency alone on the whole accelerator: the network left the rest no time
at all, graft and per-fragment lose them alike (full-model's phones send other requests, with
their own count), no plan is sized for them, and ``slo_attainment`` counts them.

Shares are the partitions the accelerator can make (`partitions.Partitioning`: by default green
contexts of the profile's device, 8-SM steps on an H200), the same for every policy.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import GraftError
from .batching import Latency, run_offline, run_shared
from .deployment import Deployment, deploy, deploy_all
from .partitions import Partitioning, for_device
from .planner import Demand, Plan, Replanner, fluid_bound, least_budget, plan
from .profiles import Profile
from .requests import Request
from .workload import Client, ModelCosts, generate

POLICIES = ("graft", "per-fragment", "full-model", "bound")
QUANTILES = (0.01, 0.1, 0.5)  # budget quantiles the plans aim at, from the tightest to the median
MAX_DOUBLINGS = 6  # headroom searched from 1 to 64 times the observed load
Progress = Callable[[str], None]  # told the name of each simulation as it finishes


@dataclass(frozen=True)
class Scenario:
    """What one `simulate` call replays: ``clients`` sending for ``duration_s`` seconds to a
    server whose latencies are ``profile``; ``costs`` are the model's cut points and FLOPs."""

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

    def __post_init__(self):
        if not 0 < self.target <= 1 or not self.quantiles or not all(0 <= q < 1 for q in self.quantiles):
            raise GraftError(f"target {self.target} and budget quantiles {self.quantiles}: "
                             f"expected 0 < target <= 1 and some quantiles in [0, 1)")
        if self.replan_s is not None and not self.replan_s > 0:
            raise GraftError(f"replan_s {self.replan_s}: expected a positive number of seconds, or None")


@dataclass(frozen=True)
class Stream:
    """A request stream in the profile's terms: ``requests[i].fragment`` is a profile fragment
    type, ``send_s[i]`` is when its phone started, ``attainable[i]`` whether its budget covers its
    latency alone on the whole accelerator; ``device_s[i]`` and ``upload_s[i]`` are the phone's
    time on the head and on the upload."""

    requests: tuple[Request, ...]
    send_s: np.ndarray
    attainable: np.ndarray
    duration_s: float
    device_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    upload_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @cached_property
    def deadline_s(self) -> np.ndarray:
        return np.array([r.deadline_s for r in self.requests])

    @cached_property
    def attainable_budgets(self) -> dict[int, np.ndarray]:
        """Fragment type -> the budgets of its attainable requests (types with some)."""
        budgets: dict[int, list[float]] = {}
        for r, ok in zip(self.requests, self.attainable):
            if ok:
                budgets.setdefault(r.fragment, []).append(r.budget_s)
        return {f: np.array(b) for f, b in sorted(budgets.items())}

    @cached_property
    def fragment(self) -> np.ndarray:
        return np.array([r.fragment for r in self.requests], dtype=int)

    @cached_property
    def arrival_s(self) -> np.ndarray:
        return np.array([r.arrival_s for r in self.requests], dtype=float)

    @cached_property
    def end_s(self) -> float:
        """When the last request arrives, or the sending ends if later."""
        return max(self.duration_s, float(self.arrival_s.max(initial=0.0)))

    def rates(self, attainable_only: bool = False) -> dict[int, float]:
        """Fragment type -> requests per second (of the attainable ones only, if asked)."""
        chosen = self.fragment[self.attainable] if attainable_only else self.fragment
        types, counts = np.unique(chosen, return_counts=True)
        return {int(f): int(n) / self.duration_s for f, n in zip(types, counts)}


@dataclass(frozen=True)
class Epoch:
    """``plan`` serves the requests that arrive from ``start_s`` until the next epoch starts."""

    start_s: float
    plan: Plan


@dataclass(frozen=True)
class Run:
    """Plans simulated: ``finish_s[i]`` is when request i was answered (NaN: dropped); the
    epochs cover ``[epochs[0].start_s, end_s)``."""

    epochs: tuple[Epoch, ...]
    finish_s: np.ndarray
    end_s: float

    @property
    def plan(self) -> Plan:
        """The plan in force longest."""
        spans = np.diff([e.start_s for e in self.epochs] + [self.end_s])
        return self.epochs[int(np.argmax(spans))].plan

    @property
    def total_share(self) -> float:
        """The epochs' total shares, averaged over time (a single plan's total share)."""
        if len(self.epochs) == 1:
            return self.epochs[0].plan.total_share
        spans = np.diff([e.start_s for e in self.epochs] + [self.end_s])
        shares = [e.plan.total_share for e in self.epochs]
        return float(np.dot(spans, shares) / spans.sum())

    def on_time(self, stream: Stream) -> np.ndarray:
        return ~np.isnan(self.finish_s) & (self.finish_s <= stream.deadline_s)


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


def fragment_cuts(profile: Profile, costs: ModelCosts) -> list[int]:
    """For each fragment type of ``profile``, the index of its cut in ``costs.cuts``."""
    index = {cut.name: i for i, cut in enumerate(costs.cuts)}
    missing = [name for name in profile.fragments if name not in index]
    if missing:
        raise GraftError(f"the profile's cuts {missing} are not cut points of the model "
                         f"(it has {[c.name for c in costs.cuts]}): was the profile made for another model, or "
                         "before graft_fx named cuts by their ATen graph nodes (torch.fx names such as "
                         "'layer1_2_relu_2')? Measure it again")
    return [index[name] for name in profile.fragments]


def make_stream(scenario: Scenario, full_model: bool = False) -> Stream:
    """The scenario's requests, each at the cut its phone chooses (``full_model``: the raw input;
    with ``scenario.private_input``, any cut but the raw input)."""
    profile, cuts = scenario.profile, fragment_cuts(scenario.profile, scenario.costs)
    of_cut = {c: f for f, c in enumerate(cuts)}
    alone = [profile.fragment_s(f, 1, 1.0) for f in range(len(cuts))]
    workload = generate(scenario.clients, scenario.costs, scenario.duration_s, scenario.seed,
                        server_estimate=lambda c: alone[of_cut[c]],
                        fragments=cuts[:1] if full_model else cuts[1:] if scenario.private_input else cuts,
                        local=False)
    requests = tuple(Request(r.deadline_s, r.arrival_s, r.id, of_cut[r.fragment]) for r in workload.requests)
    attainable = np.array([r.budget_s >= alone[r.fragment] for r in requests], dtype=bool)
    origins = workload.origins
    return Stream(requests, np.array([o.send_s for o in origins]), attainable, scenario.duration_s,
                  np.array([o.device_s for o in origins]), np.array([o.upload_s for o in origins]))


def demands(stream: Stream, profile: Profile, quantile: float, alpha: float = 1.0) -> list[Demand]:
    """Per fragment type: the rate of its attainable requests times ``alpha``, and the
    ``quantile`` of their budgets, raised to the least budget the planner can plan for (types with
    no attainable request are left out: no share can serve them). Requests that no server could
    answer in time are not planned for: they would only buy share for drops."""
    rates = stream.rates(attainable_only=True)
    return [Demand(f, rates[f] * alpha, max(float(np.quantile(b, quantile)), least_budget(profile, f)))
            for f, b in stream.attainable_budgets.items()]


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


def run_plan(stream: Stream, profile: Profile, the_plan: Plan) -> Run:
    """Serve ``stream`` with one instance per replica of each group of ``the_plan``."""
    return run_epochs(stream, profile, [Epoch(0.0, the_plan)])


def run_epochs(stream: Stream, profile: Profile, epochs: Sequence[Epoch]) -> Run:
    """Serve each request on the plan in force when it arrives: a group's requests go to its
    replicas' partitions in turn, in arrival order; a partition of one group is one `BatchQueue`
    on its own executor (`run_offline`), a time-shared one runs its groups' queues in turns
    (`run_shared`). An instance drains its own queue when its epoch ends."""
    finish = np.full(len(stream.requests), np.nan)
    starts = [e.start_s for e in epochs]
    groups = [{f: g for g, group in enumerate(e.plan.groups) for f in group.fragments} for e in epochs]
    routed: dict[tuple[int, int], list[Request]] = {}
    for r in stream.requests:
        k = max(bisect.bisect_right(starts, r.arrival_s) - 1, 0)
        g = groups[k].get(r.fragment)
        if g is not None:  # a type without a plan (none of its requests attainable) drops
            routed.setdefault((k, g), []).append(r)
    for k, epoch in enumerate(epochs):
        seats: dict[int, list[int]] = {}  # group -> the partitions of its replicas
        for p, partition in enumerate(epoch.plan.partitions):
            for g in partition.groups:
                seats.setdefault(g, []).append(p)
        share: dict[int, list] = {}  # partition -> (requests, latency) of each of its groups
        for g, places in seats.items():
            requests = routed.get((k, g), [])
            # priced on the types present (a one-type batch takes the fast path), else on the group's
            present = sorted({r.fragment for r in requests}) or list(epoch.plan.groups[g].fragments)
            latency = group_latency(profile, present, epoch.plan.partitions[places[0]].share)
            for replica, p in enumerate(places):
                share.setdefault(p, []).append((requests[replica::len(places)], latency))
        for turns in share.values():
            outcomes = ([run_offline(*turns[0], profile.max_batch)] if len(turns) == 1
                        else run_shared(turns, profile.max_batch))
            for outcome in outcomes:
                for request_id, t in outcome.completed_s().items():
                    finish[request_id] = t
    return Run(tuple(epochs), finish, stream.end_s)


def epochs_for(stream: Stream, profile: Profile, quantile: float, alpha: float, realign: bool,
               partitioning: Partitioning, replan_s: float | None) -> list[Epoch]:
    """The plans for one (budget quantile, headroom): one for the whole stream, or, every
    ``replan_s`` seconds, what a `Replanner` makes of the rates that arrived in the window
    before (the first window plans on its own rates, as a server would from yesterday's).

    Every type the stream has budgets for stays in every plan, at one request per window at
    least: an instance is not torn down because its type was quiet for one window, under either
    policy.
    """
    if replan_s is None:
        return [Epoch(0.0, plan(profile, demands(stream, profile, quantile, alpha), realign, partitioning))]
    budgets = {d.fragment: d.budget_s for d in demands(stream, profile, quantile)}
    replanner = Replanner(profile, budgets, realign=realign, partitioning=partitioning)
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
                replan_s: float | None = None) -> tuple[Run | None, list[Run]]:
    """The run with the least total share that answers ``target`` of the attainable requests on
    time, and every run simulated (see "The least share" in the module docstring).

    Every (budget quantile, headroom) on the grid is planned (plans are cheap); the distinct plans
    are simulated in order of total share until one reaches the target, and then those of the same
    share, the tie going to the best attainment. Nothing assumes that success grows with the
    headroom: a plan is skipped only when one no dearer has already succeeded.
    """
    need = target * int(stream.attainable.sum())
    runs: list[Run] = []
    if need == 0:
        return None, runs  # the network leaves no request any time: no share can help
    partitioning = partitioning or for_device(profile.device)
    candidates = _candidates(stream, profile, realign, quantiles, partitioning, replan_s)
    best, best_on_time = None, -1
    for share, epochs in candidates:
        if best is not None and share > best.total_share + 1e-12:
            break
        run = run_epochs(stream, profile, epochs)
        runs.append(run)
        on_time = int((run.on_time(stream) & stream.attainable).sum())
        if on_time >= need and on_time > best_on_time:
            best, best_on_time = run, on_time
    return best, runs


def _candidates(stream: Stream, profile: Profile, realign: bool, quantiles: Sequence[float],
                partitioning: Partitioning, replan_s: float | None) -> list[tuple[float, list[Epoch]]]:
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
                    epochs = epochs_for(stream, profile, q, alpha, mode, partitioning, replan_s)
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
                                     scenario.quantiles, scenario.partitioning, scenario.replan_s)
            results.append(result(name, policy_stream, best, runs, scenario.profile))
        if progress:
            progress(name)
    return results
