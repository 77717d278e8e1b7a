"""How fast the serving simulator replays a request stream through one plan (issue 8, item 6).

A synthetic stream of ``--requests`` requests (default one million) of several ResNet-50 fragment
types arrives as one Poisson process; each request's server budget is uniform in
[``--budget-ms``] (25-200 ms by default). The planner makes one plan for the stream's rates and
the 1st percentile of its budgets on the shipped H200 profile, and the stream is replayed through
it by `replay.run_plan`, as the least-share search replays every candidate plan. Only the
replay is timed; generating the stream and planning are not.

    python benchmarks/bench_replay.py                      # one million requests
    python benchmarks/bench_replay.py --requests 100000    # a quicker look
    python benchmarks/bench_replay.py --requests 100000 --profile   # where the time goes
    python benchmarks/bench_replay.py --alpha 0.7          # an under-provisioned plan: overload

At the default 2000 requests/s on fragment types 0, 2, 5 and 8 the plan is one instance, busy
about 70-90% of the time with batches of about 40 (the profile's latency barely grows with the
batch, so waiting until the latest start fills batches). ``--alpha`` below 1 plans for less load
than arrives, as `search.least_share`'s search may try: queues grow, most requests expire and
batches are small, which is the replay's other regime.

It prints the requests, those on time, the drops, the seconds, requests/s and the time that rate
projects for one million.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from graft_fx.serving import profiles
from graft_fx.serving.planner import Demand, plan
from graft_fx.serving.replay import run_plan
from graft_fx.serving.requests import Request
from graft_fx.serving.stream import Stream

MILLION = 1_000_000


def stream(n: int, rate: float, fragments: list[int], budget_ms: tuple[float, float],
           seed: int) -> list[Request]:
    """``n`` Poisson arrivals at ``rate`` per second, each of a uniformly drawn fragment type with
    a uniform budget; ids are 0..n-1 in arrival order (as `stream.Stream` numbers them)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    budgets = rng.uniform(budget_ms[0] / 1e3, budget_ms[1] / 1e3, n)
    types = rng.choice(fragments, n)
    return [Request(float(t + b), float(t), i, int(f))
            for i, (t, b, f) in enumerate(zip(arrivals.tolist(), budgets.tolist(), types.tolist()))]


def make_plan(profile, requests: list[Request], quantile: float, alpha: float):
    """The planner's plan for the stream's per-type rates times ``alpha`` and budget quantile
    (``alpha`` below 1 under-provisions, as `search.least_share`'s search may try)."""
    duration = requests[-1].arrival_s - requests[0].arrival_s
    by_type: dict[int, list[float]] = {}
    for r in requests:
        by_type.setdefault(r.fragment, []).append(r.budget_s)
    return plan(profile, [Demand(f, len(b) / duration * alpha, float(np.quantile(b, quantile)))
                          for f, b in sorted(by_type.items())])


def replay(profile, the_plan, requests: list[Request]):
    """The stream through the plan by `replay.run_plan`, as the least-share search replays it."""
    arrivals = np.array([r.arrival_s for r in requests])
    stream = Stream(tuple(requests), arrivals, np.ones(len(requests), dtype=bool), float(arrivals[-1]))
    return stream, run_plan(stream, profile, the_plan)


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile the replay")
    args = parser.parse_args()

    profile = profiles.load(profiles.shipped()["h200"], "resnet50")
    t0 = time.perf_counter()
    requests = stream(args.requests, args.rate, args.fragments, tuple(args.budget_ms), args.seed)
    the_plan = make_plan(profile, requests, args.quantile, args.alpha)
    print(f"stream and plan: {time.perf_counter() - t0:.1f} s; {len(the_plan.groups)} groups on "
          f"{len(the_plan.partitions)} partitions, total share {the_plan.total_share:.2f}")
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    the_stream, run = replay(profile, the_plan, requests)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    n, on_time = len(requests), int(run.on_time(the_stream).sum())
    print("| requests | on time | dropped | seconds | requests/s | projected 1M s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {n} | {on_time} | {int(np.isnan(run.finish_s).sum())} | {seconds:.2f} | {n / seconds:,.0f} | "
          f"{MILLION / (n / seconds):.1f} |")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
