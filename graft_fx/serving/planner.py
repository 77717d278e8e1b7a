"""Planning: which fragment types share one realigned instance, and how much accelerator each gets.

The planner takes one model's latency `Profile` and a `Demand` per fragment type (its arrival rate
and the server-side latency budget it must fit) and returns a `Plan`: a partition of the types
into *groups*, one realigned instance each, with a share of the accelerator per replica, a
replica count and a batching duty cycle, such that every group keeps up with its load and fits the
tightest budget of its members. The objective is the least total share: Graft's claim is that
merging fragments into realigned groups on fine-grained shares needs much less accelerator than
one instance per fragment type.

**The model of one group** (Nexus-style duty cycle). Members ``f_1 < ... < f_k`` with rates
``λ_m`` run on ``r`` replicas of share ``s``; each replica receives ``Λ / r`` and starts one batch
every duty cycle ``T``, holding what arrived during the previous one. Piece ``i`` runs once on the
rows of every member at or before it, so with ``u = T / r`` and ``C_i = Σ_{f_m <= i} λ_m`` it
gets ``x_i = u C_i`` rows in expectation; fractional rows are fine, since the profile's
interpolation through 0 at 0 rows makes a fraction of a row the expected latency of a piece that
runs in that fraction of batches. The batch a given request rides in holds its own row plus, with
Poisson arrivals, the expected rows of everyone else, so it takes

    latency = Σ_{i >= f_1} L_i(x_i + 1, s)        (`Profile.pieces_s`)

The group *keeps up* when ``latency <= T``: a batch that holds a request is over before the next
one starts (Nexus's ``ℓ(b) <= d``). It *fits* when ``T + latency <= budget``, the smallest budget
of its members: a request that arrives just after a batch started waits ``T`` for the next one.
Two deliberate pessimisms. Adding the row to every piece from ``f_1``, not only to the tight
member's pieces, means no group ever plans on a request finishing faster than its tail does alone
on one row. And keeping up is judged on that batch, not on the expected one (``busy`` =
``Σ L_i(x_i, s)``, reported as `Group.busy_s`): with fractional rows, ``busy <= T`` alone would
accept a replica that runs slivers of a row every few microseconds at nearly full utilisation, a
fluid server whose real queue explodes. The model is otherwise one of expectations: it sizes the
average batch, not the queueing tail, which the batching policy and the simulator then judge.

Every piece's ``x_i + 1`` stays within `Profile.max_batch`: the plan never rests on extrapolated
batches. Shares are the partitions the accelerator can make (`partitions.Partitioning`: green
contexts in steps of 8 SMs on an H200 by default); a group needing more than one accelerator's
worth of throughput gets more replicas; its cost is ``r * s``. A share below the profile's
smallest measured one rests on the profile's ``1 / share`` extrapolation, and its group says so
(`Group.extrapolated`).

**Why parametrise by u = T / r.** The rows depend on ``u`` only, so for a fixed ``(u, s)`` the
latency is fixed and the best replica count is the least that keeps up, ``r = ceil(latency / u)``
(more replicas only lengthen ``T = r u``); the group is feasible there when
``r u + latency <= budget``. The search is then a brute force over the share grid and a geometric
grid of ``u`` (from a thousandth of the smallest budget to the largest, about 16% apart, one grid
for all groups), with no search over ``r``. As the grid depends on budgets and never on rates,
more load gives more rows at every grid point, hence a larger ``latency`` and ``r``: **more load
never needs less share** from the grouping, exactly, not just up to the search's luck. (Time
sharing, below, is a greedy packing on top and carries no such guarantee; nothing relies on one.)

**Evaluating groups cheaply.** The profile interpolates linearly in share between measured shares
(and as ``1 / share`` below the smallest), with the same weights for every piece and batch; so
groups are evaluated at the few measured shares and mapped onto the whole share grid by one small
matrix product. Along a group's pieces the rows change only at member cuts, and member ``m`` of a
group that starts at type ``a`` gets ``u Σ_{a <= j <= m} λ_j`` rows however deep the group
reaches. So, from tables of each member's own pieces and of its tail to the end of the model (sums
over pieces, precomputed), every group starting at ``a`` is a prefix sum over members plus its
deepest member's tail, and all of them are evaluated at once as one ``(groups, u, shares)`` array.

**Grouping.** Types are sorted by cut and partitioned into contiguous runs by dynamic
programming, forward: once ``best[a]`` (the least share for types ``0 .. a-1``) is final, every
run ``a .. b-1`` updates ``best[b]``; ``n (n + 1) / 2`` runs in all. Contiguity is a design choice,
not a theorem: a group runs every piece from its shallowest member on, so the types that ride
along most cheaply are the ones between its shallowest and deepest members, and contiguous runs
keep the search polynomial where general partitions are not. Singleton runs are always candidates
(evaluated by the same code in both modes), so ``realign=True`` never needs more share than
``realign=False``, the one instance per fragment type baseline.

**Time sharing** (`_time_share`, on by default). Partitions are coarse (8 of 132 SMs on an
H200), so a light group alone would leave most of its partition idle. After grouping,
single-replica groups may take turns on one partition within a common duty cycle, as Nexus packs
models onto a GPU ("squishy bin packing"); each partition of the `Plan` lists the groups it runs.
Both policies get it: per-fragment instances take turns just as realigned groups do.

**Padded batching** (``buckets``, `graft_fx.buckets`). A realigned module that pads each
member's rows up to the next bucket runs every piece on padded rows, and the planner charges them.
Member ``m`` pads its ``x_m = u λ_m`` expected rows to ``p(x_m)``, where ``p`` is ``bucketed``
at whole rows and linear between them (``p(x) = x bucketed(1)`` below one row: a member that
comes in that fraction of batches, padded to its first bucket when it does). The batch a request
of member ``m`` rides in pads ``x_m + 1`` instead, adding ``Δ_m = p(x_m + 1) - p(x_m)`` rows to the
pieces from ``f_m`` on; which member the request belongs to is unknown, so piece ``i`` is charged
the largest ``Δ_m`` over members at or before it: the same pessimism as adding the row from
``f_1``, exact for a group of one. Both counts are at least the unpadded ones (``p(x) >= x``, and
``p(x_m + 1) >= x_m + 1``), and both grow with every rate (the request's count at piece ``i`` is
the largest over members ``m`` at or before ``i`` of ``Σ_{j != m} p(x_j) + p(x_m + 1)``, each term
non-decreasing), so a padded plan never needs less share than an unpadded one, and more load
never needs less share, both exactly for the grouping.
The padded rows, too, stay within `Profile.max_batch`. Hence the rule for bucket lists
(`check_buckets_fit`): the *first* bucket must be at most ``max_batch``, since every request
pads to at least that many rows and no batch of them could be planned within the measured
batches; ``plan``, `least_budget`, `Replanner` and the simulator's `Scenario` refuse a larger one
up front, naming it. *Later* buckets may exceed ``max_batch`` (`graft_fx.buckets.POWERS_OF_TWO`
reaches 256, the shipped profiles stop at 64): the planner only sizes groups whose padded
batches stay within ``max_batch``, so such buckets limit the load a group can take, and the
batches the batching policy does pad past ``max_batch`` (several fragments together) are priced by
the profile's slope for large batches (`pricing`, `profiles`).

`fluid_bound` is the throughput-only lower bound, and `Replanner` re-plans when rates drift.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..buckets import bucketed, check_buckets
from ..errors import GraftError
from .partitions import Partitioning, for_device
from .profiles import Profile, share_weights

# The grid of u = T / r: from this fraction of the smallest budget to the largest, this far apart.
_U_LOW = 1e-3
_U_RATIO = 1.16
_CHUNK_CELLS = 32768  # (groups, u, shares) cells evaluated together: arrays that stay in cache


@dataclass(frozen=True)
class Demand:
    """Requests of fragment type ``fragment`` arrive at ``rate_per_s``, and each must finish on the
    server within ``budget_s`` (e.g. the 1st percentile of that type's request budgets)."""

    fragment: int
    rate_per_s: float
    budget_s: float


@dataclass(frozen=True)
class Group:
    """Fragment types that one realigned instance serves, and how it is sized.

    Each of ``replicas`` replicas runs on ``share`` of an accelerator and starts a batch every
    ``duty_cycle_s``. ``rows`` is the expected number of rows in a batch, all members together
    (the rows the group's deepest pieces see; padded rows when the plan pads to buckets).
    ``latency_s`` is the time of the batch a given request rides in (its own row on top of the
    expected others): at most ``duty_cycle_s``, and
    ``duty_cycle_s + latency_s`` is at most ``budget_s``, the smallest budget of the members.
    ``busy_s`` is the expected executor time of a batch, so ``busy_s / duty_cycle_s`` is the
    expected utilisation of a replica.
    """

    fragments: tuple[int, ...]
    share: float
    replicas: int
    duty_cycle_s: float
    busy_s: float
    latency_s: float
    budget_s: float
    rows: float
    extrapolated: bool = False  # the share is below the profile's smallest measured share


@dataclass(frozen=True)
class Partition:
    """One partition of a device: ``share`` of it runs one replica of each group in ``groups``
    (indices into `Plan.groups`). Several groups take turns on it within their common duty cycle
    (time sharing)."""

    share: float
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """Groups that together serve every demanded fragment type exactly once, on partitions of
    ``partitioning``. ``partitions`` place every replica of every group; by default each replica
    has a partition of its own. ``buckets``: the batch sizes each group pads every member's rows
    up to (`graft_fx.buckets`), as the plan was priced; None when batches are not padded."""

    groups: tuple[Group, ...]
    partitioning: Partitioning | None = None
    partitions: tuple[Partition, ...] = ()
    buckets: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.buckets is not None:
            object.__setattr__(self, "buckets", check_buckets(self.buckets))
        if not self.partitions:
            own = tuple(Partition(g.share, (i,)) for i, g in enumerate(self.groups) for _ in range(g.replicas))
            object.__setattr__(self, "partitions", own)
        seats = Counter(g for p in self.partitions for g in p.groups)
        wrong = {g: seats[g] for g, group in enumerate(self.groups) if seats[g] != group.replicas}
        if wrong or any(g not in range(len(self.groups)) for g in seats):
            raise GraftError(f"partitions seat groups {dict(sorted(seats.items()))} times: expected each of the "
                             f"{len(self.groups)} groups as many times as its replicas "
                             f"({[g.replicas for g in self.groups]})")
        if self.partitioning is not None:
            grid = self.partitioning.grid
            odd = sorted({p.share for p in self.partitions if not np.any(np.abs(grid - p.share) < 1e-9)})
            if odd:
                raise GraftError(f"partitions of shares {odd}: expected shares that {self.partitioning} can make")

    @property
    def total_share(self) -> float:
        return sum(p.share for p in self.partitions)

    def describe(self, share: float) -> str:
        """A share as the plan's partitioning names it ("16 SMs", "12%"), else as a fraction."""
        return self.partitioning.describe(share) if self.partitioning else f"{share:.3f}"

    def group_of(self, fragment: int) -> int:
        """The index in ``groups`` of the group that serves ``fragment``."""
        for i, g in enumerate(self.groups):
            if fragment in g.fragments:
                return i
        planned = sorted(f for g in self.groups for f in g.fragments)
        raise GraftError(f"fragment {fragment} is not in the plan: it serves fragments {planned}")

    def __str__(self) -> str:
        head = ("group", "fragments", "share", "replicas", "cycle ms", "latency ms", "budget ms")
        rows = [head] + [(str(i), ",".join(map(str, g.fragments)), self.describe(g.share) + "*" * g.extrapolated,
                          str(g.replicas),
                          f"{g.duty_cycle_s * 1e3:.3f}", f"{g.latency_s * 1e3:.3f}",
                          f"{g.budget_s * 1e3:.3f}") for i, g in enumerate(self.groups)]
        widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        shared = [p.groups for p in self.partitions if len(p.groups) > 1]
        turns = f"; time-shared partitions: {shared}" if shared else ""
        return "\n".join(lines + [f"total share {self.total_share:.2f}{turns}"])


def plan(profile: Profile, demands: Iterable[Demand], realign: bool = True,
         partitioning: Partitioning | None = None, time_sharing: bool = True,
         buckets: Sequence[int] | None = None) -> Plan:
    """The least-share plan for ``demands`` on ``profile``; see the module docstring.

    ``realign=False`` gives every type its own instance (the per-fragment baseline). Groups are
    sized on the profile's p99 service times where it has them (`Profile.planning`).
    ``partitioning`` lists the shares a plan may use; by default, green contexts of the profile's
    device (`partitions.for_device`). ``time_sharing`` lets single-replica groups take turns on
    one partition where that needs less share (`_time_share`). With ``realign`` the plan is the
    cheaper of the realigned one and the per-fragment one (which is a realigned plan too, of
    singleton groups), so re-alignment never needs more share, time sharing or not. With
    ``buckets`` every batch is charged at its padded rows ("Padded batching"); None charges the
    rows as they are. Raises GraftError for bad demands, for buckets that `check_buckets_fit`
    refuses (a first bucket above the profile's largest measured batch), and for a type that cannot
    meet its budget even alone on a whole accelerator (roughly: a budget below twice its one-row
    latency at share 1.0, its one row padded to the first bucket).
    """
    demands = _check_demands(profile, demands)
    buckets = check_buckets_fit(profile, buckets)
    partitioning = partitioning or for_device(profile.device)
    if not demands:
        return Plan((), partitioning, buckets=buckets)
    profile = profile.planning
    t = _Tables(profile, partitioning.grid, demands, buckets)
    singles = [_runs(t, a, a + 1) for a in range(t.n)]
    for d, single in zip(demands, singles):
        if not math.isfinite(single.cost[0]):
            raise _unservable(profile, d, buckets)
    plans = []
    for merge in ((False, True) if realign else (False,)):
        groups = [_group(t, a, b, runs) for a, b, runs in _grouping(t, singles, merge)]
        plans.append(_time_share(t, groups, partitioning) if time_sharing else Plan(tuple(groups), partitioning))
    return replace(min(plans, key=lambda p: (round(p.total_share, 9), len(p.groups))), buckets=buckets)


def _grouping(t: _Tables, singles: list[_Runs], realign: bool) -> list[tuple[int, int, _Runs]]:
    """The least-share partition of the types into contiguous groups ``a .. b-1`` (see
    "Grouping"), as ``(a, b, runs)`` in cut order."""
    best = [0.0] + [math.inf] * t.n      # best[b]: the least share for types 0 .. b-1
    last: list[tuple[int, _Runs]] = [(0, singles[0])] * (t.n + 1)  # last[b]: its last group's start
    for a in range(t.n):
        # singles[a] sizes the group of a alone; _runs(a, n) the longer ones (b >= a + 2)
        for b, cost, runs in _candidates(t, a, singles[a], realign):
            if best[a] + cost < best[b]:
                best[b], last[b] = best[a] + cost, (a, runs)
    groups, b = [], t.n
    while b > 0:
        a, runs = last[b]
        groups.append((a, b, runs))
        b = a
    return groups[::-1]


def _candidates(t: _Tables, a: int, single: _Runs, realign: bool):
    """(b, cost, runs) for the groups a .. b-1 the partition may use."""
    yield a + 1, float(single.cost[0]), single
    if realign and a + 1 < t.n:
        runs = _runs(t, a, t.n)
        for b in range(a + 2, t.n + 1):
            yield b, float(runs.cost[b - a - 1]), runs


def fluid_bound(profile: Profile, rates: Mapping[int, float]) -> float:
    """The least total share any policy needs for throughput alone, ignoring latency.

    Under re-alignment piece ``i`` processes ``Σ_{f <= i} λ_f`` rows a second, and no batch within
    the measured range, at any share, processes a row of piece ``i`` for less than
    ``min s L_i(b, s) / b`` share-seconds over the measured batches ``b`` and shares ``s``: between
    measured points the profile is linear in rows and in share, so ``L / b`` and ``s L`` take their
    least values at measured points, and below the smallest measured share ``s L`` is constant.
    """
    demands = _check_demands(profile, [Demand(f, r, math.inf) for f, r in rates.items() if r != 0],
                             budgets=False)
    per_row = _per_row_cost(profile)
    load = np.zeros(len(profile.pieces))
    for d in demands:
        load[d.fragment] += d.rate_per_s
    return float(np.cumsum(load) @ per_row)


class Replanner:
    """Keeps a plan and re-plans when the rates it was made for drift.

    ``observe`` re-plans when a type's rate moved by more than ``tolerance`` (relative), a type
    appeared or disappeared (a rate of 0 counts as absent), or a budget changed since the last plan.
    Every plan pads its batches to ``buckets`` (`plan`; None: no padding).
    """

    def __init__(self, profile: Profile, budgets: Mapping[int, float], tolerance: float = 0.2,
                 realign: bool = True, partitioning: Partitioning | None = None,
                 buckets: Sequence[int] | None = None):
        if not tolerance >= 0:
            raise GraftError(f"tolerance {tolerance}: expected a relative drift of 0 or more")
        self.profile = profile
        self.budgets = dict(budgets)
        self.tolerance = tolerance
        self.realign = realign
        self.partitioning = partitioning
        self.buckets = check_buckets_fit(profile, buckets)
        self.plan: Plan | None = None
        self.rates: dict[int, float] = {}

    def set_budget(self, fragment: int, budget_s: float) -> None:
        """Change one type's budget; the next `observe` re-plans."""
        self.budgets[fragment] = budget_s
        self.plan = None

    def observe(self, rates: Mapping[int, float]) -> Plan | None:
        """The new plan if ``rates`` call for one (it is kept), else None."""
        rates = {f: float(r) for f, r in rates.items() if r != 0}
        if self.plan is not None and not self._drifted(rates):
            return None
        missing = sorted(set(rates) - set(self.budgets))
        if missing:
            raise GraftError(f"no budget for fragments {missing}: expected one for every observed type, "
                             f"have {sorted(self.budgets)}")
        demands = [Demand(f, r, self.budgets[f]) for f, r in sorted(rates.items())]
        self.plan = plan(self.profile, demands, self.realign, self.partitioning, buckets=self.buckets)
        self.rates = rates
        return self.plan

    def _drifted(self, rates: Mapping[int, float]) -> bool:
        if rates.keys() != self.rates.keys():
            return True
        return any(abs(r - self.rates[f]) > self.tolerance * self.rates[f] for f, r in rates.items())


# Validation and errors.

def _check_demands(profile: Profile, demands: Iterable[Demand], budgets: bool = True) -> list[Demand]:
    demands = sorted(demands, key=lambda d: d.fragment)
    n = len(profile.pieces)
    for d in demands:
        if not (isinstance(d.fragment, (int, np.integer)) and 0 <= d.fragment < n):
            raise GraftError(f"demand for fragment {d.fragment!r}: expected a fragment index in "
                             f"0..{n - 1} ({profile.model} has {n} fragment types)")
        if not (math.isfinite(d.rate_per_s) and d.rate_per_s > 0):
            raise GraftError(f"demand for fragment {d.fragment}: rate {d.rate_per_s}/s, expected a "
                             "positive finite rate")
        if budgets and not (math.isfinite(d.budget_s) and d.budget_s > 0):
            raise GraftError(f"demand for fragment {d.fragment}: budget {d.budget_s} s, expected a "
                             "positive finite budget")
    repeated = sorted({a.fragment for a, b in zip(demands, demands[1:]) if a.fragment == b.fragment})
    if repeated:
        raise GraftError(f"several demands for fragments {repeated}: expected one per fragment type")
    return demands



def least_budget(profile: Profile, fragment: int, buckets: Sequence[int] | None = None) -> float:
    """The least budget a type can be planned for, with room to spare: twice its latency alone
    on one row of a whole accelerator (a request may wait as long again for its batch to start),
    one step of the duty-cycle grid more. With ``buckets``, the one row is padded to the first
    bucket. Raises GraftError for buckets that `check_buckets_fit` refuses."""
    return 2 * _U_RATIO * profile.planning.fragment_s(fragment, _one_row(check_buckets_fit(profile, buckets)), 1.0)


def check_buckets_fit(profile: Profile, buckets: Sequence[int] | None) -> tuple[int, ...] | None:
    """``buckets`` checked (`graft_fx.buckets.check_buckets`: a tuple of plain ints) and held
    against ``profile``, or None for None (no padding).

    Raises GraftError for a bucket list that ``check_buckets`` refuses, and for a first bucket
    above ``profile.max_batch``: every request pads to at least the first bucket, and the
    planner plans only batches within the measured ones, so no plan could serve a single request
    ("Padded batching" in the module docstring; later buckets may exceed ``max_batch``).
    """
    if buckets is None:
        return None
    buckets = check_buckets(buckets)
    if buckets[0] > profile.max_batch:
        raise GraftError(
            f"bucket {buckets[0]} (the first) exceeds the profile's largest measured batch {profile.max_batch}: "
            f"every request would be padded to at least {buckets[0]} rows, and plans stay within the measured "
            f"batches; expected a first bucket of at most {profile.max_batch} (later buckets may exceed it: "
            f"graft_fx.buckets.POWERS_OF_TWO is fine), got buckets={list(buckets)}")
    return buckets


def _one_row(buckets: Sequence[int] | None) -> int:
    """The rows one request runs on: 1, or its first bucket when padding."""
    return 1 if buckets is None else bucketed(1, buckets)


def _unservable(profile: Profile, d: Demand, buckets: Sequence[int] | None) -> GraftError:
    one = _one_row(buckets)
    least = profile.fragment_s(d.fragment, one, 1.0)
    padded = "" if one == 1 else f" (padded to {one})"
    return GraftError(
        f"fragment {d.fragment} (cut {profile.pieces[d.fragment].start!r}) cannot be served at "
        f"{d.rate_per_s:g}/s within its budget of {d.budget_s * 1e3:.3f} ms: alone on a whole "
        f"accelerator its pieces take {least * 1e3:.3f} ms on one row{padded}, and a request may wait as long "
        f"again for its batch to start; expected a budget above {2 * least * 1e3:.3f} ms (and a rate "
        f"whose batches stay within the largest measured batch, {profile.max_batch})")


# The tables every group is evaluated with.

class _Tables:
    """A profile prepared for evaluating groups of the demanded types (see "Evaluating groups
    cheaply"). ``latency[block * (max_batch + 1) + rows, measured share]``: blocks ``0 .. n-1`` are
    each member's own pieces (up to the next member's cut), blocks ``n .. 2n-1`` its tail to the
    end of the model; ``step`` is the rise to the next row (never negative). ``padded[k]`` is the
    bucketed size of k rows (None without buckets), for `rows`."""

    def __init__(self, profile: Profile, shares: np.ndarray, demands: list[Demand],
                 buckets: tuple[int, ...] | None = None):
        frags = np.array([d.fragment for d in demands], dtype=int)
        self.rates = np.array([d.rate_per_s for d in demands], dtype=float)
        self.budgets = np.array([d.budget_s for d in demands], dtype=float)
        self.frags, self.n, self.max_batch = frags, len(frags), profile.max_batch
        self.shares = shares
        self.least_measured = float(profile.shares[0])
        self.weights = _share_weights(profile.shares, self.shares).T  # (measured, grid shares)
        lo, hi = self.budgets.min() * _U_LOW, self.budgets.max()
        self.u = np.geomspace(lo, hi, 1 + math.ceil(math.log(hi / lo) / math.log(_U_RATIO)))
        # suffix[k, x, m]: pieces k.. on x = 0 .. max_batch rows at measured share m; suffix[P] = 0
        table = np.stack([profile.table(float(s)) for s in profile.shares], axis=-1)
        suffix = np.concatenate((np.flip(np.cumsum(np.flip(table, 0), 0), 0), np.zeros_like(table[:1])))
        ends = np.append(frags[1:], len(profile.pieces))
        blocks = np.concatenate((suffix[frags] - suffix[ends], suffix[frags]))
        self.latency = blocks.reshape(-1, blocks.shape[-1])
        self.step = np.maximum(np.diff(blocks, axis=1, append=blocks[:, -1:]), 0).reshape(
            self.latency.shape)
        # padded sizes of 0 .. max_batch + 3 rows: enough to pad x + 1 for x up to max_batch + 2,
        # where a batch has outgrown the profile anyway (`_pad` clips there)
        self.padded = None if buckets is None else np.array(
            [bucketed(k, buckets) for k in range(self.max_batch + 4)], dtype=float)

    def rows(self, members: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expected rows ``[member, u]`` at the pieces of each of ``members`` (consecutive
        indices, from a group's first), for duty cycles per replica ``u``: in the expected batch
        (``busy``), and in the batch a request rides in (``with_request``), padded to buckets where
        the plan pads ("Padded batching"); unpadded, ``with_request`` is ``busy + 1``."""
        if self.padded is None:
            busy = np.cumsum(self.rates[members])[:, None] * u
            return busy, busy + 1
        per_member = self.rates[members][:, None] * u
        alone = self._pad(per_member)
        busy = np.cumsum(alone, axis=0)
        return busy, busy + np.maximum.accumulate(self._pad(per_member + 1) - alone, axis=0)

    def _pad(self, rows: np.ndarray) -> np.ndarray:
        """``p(rows)``: the bucketed size at whole rows, linear between them; rows beyond
        ``max_batch + 2`` count as ``max_batch + 2`` (a batch the plan refuses anyway)."""
        rows = np.minimum(rows, self.max_batch + 2)
        whole = np.minimum(rows.astype(int), len(self.padded) - 2)
        lo, hi = self.padded[whole], self.padded[whole + 1]
        return lo + (hi - lo) * (rows - whole)

    def extrapolated(self, s: int) -> bool:
        """Whether grid share ``s`` lies below the profile's smallest measured share."""
        return bool(self.shares[s] < self.least_measured - 1e-12)

    def lookup(self, blocks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``out[i, j, m]``: block ``blocks[i]`` on ``rows[i, j]`` rows at measured share ``m``
        (linear between whole rows, as the profile interpolates)."""
        rows = np.minimum(rows, self.max_batch)
        whole = np.minimum(rows.astype(int), self.max_batch - 1)
        i = blocks[:, None] * (self.max_batch + 1) + whole
        return self.latency[i] + self.step[i] * (rows - whole)[..., None]


def _share_weights(measured: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``W[g, m]``: latency at grid share ``g`` = Σ_m W[g, m] × latency at measured share ``m``,
    the profile's interpolation in share (`profiles.share_weights`)."""
    w = np.zeros((len(grid), len(measured)))
    for g, s in enumerate(grid):
        for m, weight in share_weights(measured, s):
            w[g, m] = weight
    return w


def _per_row_cost(profile: Profile) -> np.ndarray:
    """Per piece: the least share-seconds one row costs at a measured batch and share."""
    cost = profile.shares[None, :, None] * profile.latency_s / profile.batches[None, None, :]
    return cost.min(axis=(1, 2))


# Groups.

@dataclass(frozen=True)
class _Runs:
    """The best sizing of each group ``a .. b-1`` for one ``a`` and ``b = a+1, a+2, ...``: its
    cost (inf where nothing fits) and where on the (u, share) grid it was found."""

    cost: np.ndarray
    u: np.ndarray          # index into the u grid
    share: np.ndarray      # index into the share grid
    replicas: np.ndarray
    latency: np.ndarray


def _runs(t: _Tables, a: int, stop: int) -> _Runs:
    """Size every group ``a .. b-1`` for ``b`` up to ``stop`` at once."""
    members = np.arange(a, stop)
    _, rows = t.rows(members, t.u)                                # (groups, u): a request's batch
    own = t.lookup(members, rows)
    before = np.concatenate((np.zeros_like(own[:1]), np.cumsum(own[:-1], axis=0)))
    measured = before + t.lookup(members + t.n, rows)             # (groups, u, measured shares)
    budget = np.where(rows <= t.max_batch, np.minimum.accumulate(t.budgets[a:stop])[:, None], -1.0)
    chunk = max(1, _CHUNK_CELLS // (len(t.u) * len(t.shares)))
    parts = [_best_sizes(t, measured[i:i + chunk], budget[i:i + chunk])
             for i in range(0, len(members), chunk)]
    return _Runs(*(np.concatenate(x) for x in zip(*parts)))


def _best_sizes(t: _Tables, measured: np.ndarray, budget: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per group: the least cost over the (u, share) grid, where, its replicas and latency;
    ``budget[group, u]`` is negative where the batch would outgrow the profile."""
    latency = measured @ t.weights                                # (groups, u, shares)
    u = t.u[:, None]
    replicas = np.ceil(latency / u)                               # the least that keep up
    cost = np.where(replicas * u + latency <= budget[..., None], replicas * t.shares, np.inf)
    best = np.argmin(cost.reshape(len(cost), -1), axis=1)
    i, (k, s) = np.arange(len(cost)), np.unravel_index(best, cost.shape[1:])
    return cost[i, k, s], k, s, replicas[i, k, s].astype(int), latency[i, k, s]


def _group(t: _Tables, a: int, b: int, runs: _Runs) -> Group:
    """The `Group` of types ``a .. b-1`` as ``runs`` (from ``a``) sized it."""
    i, u, s = b - a - 1, t.u[runs.u[b - a - 1]], runs.share[b - a - 1]
    members = np.arange(a, b)
    rows, _ = t.rows(members, np.array([u]))
    blocks = np.append(members[:-1], members[-1] + t.n)
    busy = float(t.lookup(blocks, rows).sum(axis=0)[0] @ t.weights[:, s])
    replicas = int(runs.replicas[i])
    return Group(tuple(int(f) for f in t.frags[a:b]), float(t.shares[s]), replicas,
                 replicas * float(u), busy, float(runs.latency[i]), float(t.budgets[a:b].min()),
                 float(rows[-1, 0]), t.extrapolated(s))


# Time sharing.

@dataclass
class _Turns:
    """Single-replica groups taking turns on one partition: their summed request-batch latency
    ``latency[u, share]`` and tightest budget ``budget[u]`` (negative where some batch would
    outgrow the profile), and the partition's cost."""

    members: list[int]
    latency: np.ndarray
    budget: np.ndarray
    cost: float

    def merged(self, other: _Turns, t: _Tables) -> tuple[_Turns, int, int] | None:
        """Both on one partition at the least share where some duty cycle fits, and where."""
        latency, budget = self.latency + other.latency, np.minimum(self.budget, other.budget)
        k, s = _least_fit(t, latency, budget)
        if k is None:
            return None
        return _Turns(self.members + other.members, latency, budget, float(t.shares[s])), k, s


def _least_fit(t: _Tables, latency: np.ndarray, budget: np.ndarray) -> tuple[int | None, int]:
    """The least share index where some ``u`` keeps up (``latency <= u``) and fits
    (``u + latency <= budget``), and the ``u`` index there with the most slack."""
    u = t.u[:, None]
    slack = np.where(latency <= u, budget[:, None] - u - latency, -np.inf)
    fits = np.flatnonzero((slack >= 0).any(axis=0))
    if not len(fits):
        return None, -1
    s = int(fits[0])
    return int(np.argmax(slack[:, s])), s


def _arrays(t: _Tables, g: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A group on one replica at every ``(u, share)``: the latency of the batch a request rides
    in, the expected busy time, the budget per ``u`` (negative where the batch outgrows the
    profile), and the expected rows per ``u``."""
    a = int(np.searchsorted(t.frags, g.fragments[0]))
    members = np.arange(a, a + len(g.fragments))
    rows, with_request = t.rows(members, t.u)
    blocks = np.append(members[:-1], members[-1] + t.n)
    latency = t.lookup(blocks, with_request).sum(axis=0) @ t.weights
    busy = t.lookup(blocks, rows).sum(axis=0) @ t.weights
    budget = np.where(with_request[-1] <= t.max_batch, g.budget_s, -1.0)
    return latency, busy, budget, rows[-1]


def _time_share(t: _Tables, groups: list[Group], partitioning: Partitioning) -> Plan:
    """Let single-replica groups take turns on shared partitions where that needs less share
    (Nexus's squishy bin packing, Shen et al., SOSP 2019, on this planner's model).

    Groups on one partition of share ``s`` run one batch each per common duty cycle ``T`` (one
    replica each, so ``u = T``). They keep up when the batches a request rides in add up to at
    most ``T``, and fit when ``T`` plus that sum is within every member's budget: a request may
    wait a whole cycle and then for every member's batch, whatever order they run in. Greedy:
    merge the two partitions whose merging saves the most share, until no merge saves any.
    Groups with several replicas keep their own partitions (they fill them already).
    """
    arrays = {i: _arrays(t, g) for i, g in enumerate(groups) if g.replicas == 1}
    turns = {i: _Turns([i], arrays[i][0], arrays[i][2], groups[i].share) for i in arrays}
    pairs = {(x, y): turns[x].merged(turns[y], t) for x in turns for y in turns if x < y}
    placed: dict[int, tuple[int, int]] = {}  # first member -> (u, share) index of its partition
    fresh = len(groups)                     # keys of merged partitions
    while True:
        saving = {k: turns[k[0]].cost + turns[k[1]].cost - m[0].cost for k, m in pairs.items() if m}
        best = max(saving, key=saving.__getitem__, default=None)
        if best is None or saving[best] <= 1e-12:
            break
        joined, k, s = pairs[best]
        placed[joined.members[0]] = (k, s)
        for gone in best:
            del turns[gone]
        pairs = {key: m for key, m in pairs.items() if not set(key) & set(best)}
        pairs.update({(x, fresh): turns[x].merged(joined, t) for x in turns})
        turns[fresh], fresh = joined, fresh + 1
    out = list(groups)
    partitions = [Partition(g.share, (i,)) for i, g in enumerate(groups) if i not in arrays for _ in range(g.replicas)]
    for turn in turns.values():
        if len(turn.members) == 1:
            partitions.append(Partition(turn.cost, (turn.members[0],)))
            continue
        k, s = placed[turn.members[0]]
        for i in turn.members:
            latency, busy, _, rows = arrays[i]
            out[i] = replace(groups[i], share=float(t.shares[s]), duty_cycle_s=float(t.u[k]),
                             busy_s=float(busy[k, s]), latency_s=float(latency[k, s]), rows=float(rows[k]),
                             extrapolated=t.extrapolated(s))
        partitions.append(Partition(float(t.shares[s]), tuple(sorted(turn.members))))
    partitions.sort(key=lambda p: p.groups)
    return Plan(tuple(out), partitioning, tuple(partitions))
