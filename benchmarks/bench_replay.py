"""How fast the serving simulator replays a request stream through one plan (issue 8, item 6).

A synthetic stream of ``--requests`` requests (default one million) of several ResNet-50 fragment
types arrives as one Poisson process; each request's server budget is uniform in
[``--budget-ms``] (25-200 ms by default). The planner makes one plan for the stream's rates and
the 1st percentile of its budgets on the shipped H200 profile, and the stream is replayed through
it exactly as `simulator.run_epochs` does: each group's requests go to its replicas in turn, and
each replica is one `run_offline` with `simulator.group_latency` as its latency. Only the replay
(routing, latency closures, `run_offline`) is timed; generating the stream and planning are not.

    python benchmarks/bench_replay.py                      # one million requests
    python benchmarks/bench_replay.py --requests 100000    # a quicker look
    python benchmarks/bench_replay.py --requests 100000 --profile   # where the time goes
    python benchmarks/bench_replay.py --alpha 0.7          # an under-provisioned plan: overload

At the default 2000 requests/s on fragment types 0, 2, 5 and 8 the plan is one instance, busy
about 70-90% of the time with batches of about 40 (the profile's latency barely grows with the
batch, so waiting until the latest start fills batches). ``--alpha`` below 1 plans for less load
than arrives, as `simulator.least_share`'s search may try: queues grow, most requests expire and
batches are small, which is the replay's other regime.

It prints one row per replica (its requests, batches, drops, mean batch, utilisation) and the
total: requests, batches, seconds, requests/s and the time that rate projects for one million.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from graft_fx.serving import profiles
from graft_fx.serving.batching import run_offline
from graft_fx.serving.planner import Demand, plan
from graft_fx.serving.requests import Request
from graft_fx.serving.simulator import group_latency

MILLION = 1_000_000


def stream(n: int, rate: float, fragments: list[int], budget_ms: tuple[float, float],
           seed: int) -> list[Request]:
    """``n`` Poisson arrivals at ``rate`` per second, each of a uniformly drawn fragment type with
    a uniform budget; ids are 0..n-1 in arrival order (as `simulator.Stream` numbers them)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    budgets = rng.uniform(budget_ms[0] / 1e3, budget_ms[1] / 1e3, n)
    types = rng.choice(fragments, n)
    return [Request(float(t + b), float(t), i, int(f))
            for i, (t, b, f) in enumerate(zip(arrivals.tolist(), budgets.tolist(), types.tolist()))]


def make_plan(profile, requests: list[Request], quantile: float, alpha: float):
    """The planner's plan for the stream's per-type rates times ``alpha`` and budget quantile
    (``alpha`` below 1 under-provisions, as `simulator.least_share`'s search may try)."""
    duration = requests[-1].arrival_s - requests[0].arrival_s
    by_type: dict[int, list[float]] = {}
    for r in requests:
        by_type.setdefault(r.fragment, []).append(r.budget_s)
    return plan(profile, [Demand(f, len(b) / duration * alpha, float(np.quantile(b, quantile)))
                          for f, b in sorted(by_type.items())])


def replay(profile, the_plan, requests: list[Request], max_batch: int, eager: bool):
    """`simulator.run_epochs` for one epoch, keeping each replica's `Outcome` for the table."""
    group_of = {f: g for g, group in enumerate(the_plan.groups) for f in group.fragments}
    routed: dict[int, list[Request]] = {}
    for r in requests:
        routed.setdefault(group_of[r.fragment], []).append(r)
    rows = []
    for g, reqs in sorted(routed.items()):
        group = the_plan.groups[g]
        latency = group_latency(profile, sorted({r.fragment for r in reqs}), group.share)
        for replica in range(group.replicas):
            mine = reqs[replica::group.replicas]
            outcome = run_offline(mine, latency, max_batch, eager)
            busy = sum(b.finish_s - b.start_s for b in outcome.batches)
            span = max(mine[-1].arrival_s - mine[0].arrival_s, 1e-12)
            rows.append((g, replica, group, len(mine), outcome, busy / span))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=MILLION)
    parser.add_argument("--rate", type=float, default=2000.0, help="requests per second, all types")
    parser.add_argument("--fragments", type=int, nargs="+", default=[0, 2, 5, 8],
                        help="ResNet-50 fragment types the requests use")
    parser.add_argument("--budget-ms", type=float, nargs=2, default=(25.0, 200.0))
    parser.add_argument("--quantile", type=float, default=0.01, help="budget quantile to plan for")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="plan for the rates times this (below 1: an overloaded plan)")
    parser.add_argument("--max-batch", type=int, default=None, help="default: the profile's")
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile the replay")
    args = parser.parse_args()

    profile = profiles.load(profiles.shipped()["h200"], "resnet50")
    max_batch = args.max_batch or profile.max_batch
    t0 = time.perf_counter()
    requests = stream(args.requests, args.rate, args.fragments, tuple(args.budget_ms), args.seed)
    the_plan = make_plan(profile, requests, args.quantile, args.alpha)
    print(f"stream and plan: {time.perf_counter() - t0:.1f} s; "
          f"{len(the_plan.groups)} groups, total share {the_plan.total_share:.2f}")

    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    rows = replay(profile, the_plan, requests, max_batch, args.eager)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started

    print(f"{'group':>5} {'replica':>7} {'fragments':>12} {'share':>5} {'requests':>9} "
          f"{'batches':>8} {'drops':>6} {'mean batch':>10} {'busy':>5}")
    for g, replica, group, n, outcome, busy in rows:
        s = outcome.stats
        frags = ",".join(map(str, group.fragments))
        print(f"{g:>5} {replica:>7} {frags:>12} {group.share:>5.2f} {n:>9} {s.batches:>8} "
              f"{s.dropped:>6} {s.dispatched / max(s.batches, 1):>10.1f} {busy:>5.0%}")
    n = sum(r[3] for r in rows)
    batches = sum(r[4].stats.batches for r in rows)
    drops = sum(r[4].stats.dropped for r in rows)
    print()
    print("| requests | batches | drops | seconds | requests/s | projected 1M s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {n} | {batches} | {drops} | {seconds:.2f} | {n / seconds:,.0f} | "
          f"{MILLION / (n / seconds):.1f} |")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
