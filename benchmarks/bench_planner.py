"""How long the planner takes: 11 fragment types of a real profile, and 100 synthetic ones.

The 100-type profile has one piece per type, each taking ``launch + work * rows / share**0.7``
with launch and work drawn at random (a model cut at 100 places); every type gets a random rate
and budget. Timings are the median of ``--reps`` calls, with realignment on (the DP over groups)
and off (one instance per type), with and without time sharing, on two share grids: H200 green
contexts (17 partition sizes) and whole percentages (100, as MPS offers).

    python benchmarks/bench_planner.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from graft_fx.serving import partitions, profiles
from graft_fx.serving.planner import Demand, plan
from graft_fx.serving.profiles import Piece, Profile


def synthetic(n: int, rng: np.random.Generator) -> Profile:
    shares, batches = np.array([0.25, 0.5, 1.0]), np.array([1, 2, 4, 8, 16, 32, 64])
    launch, work = rng.uniform(5e-6, 15e-6, n), rng.uniform(5e-7, 2e-6, n)
    latency = launch[:, None, None] + work[:, None, None] * batches[None, None, :] / shares[None, :, None] ** 0.7
    pieces = tuple(Piece(f"cut{i}", f"cut{i + 1}", 1 / n, 1000, (10,)) for i in range(n))
    return Profile("synthetic", "synthetic", "synthetic", pieces, shares, batches, latency)


def timed(profile: Profile, demands: list[Demand], realign: bool, grid: partitions.Partitioning,
          time_sharing: bool, reps: int) -> tuple[float, float]:
    times, share = [], 0.0
    for _ in range(reps):
        started = time.perf_counter()
        share = plan(profile, demands, realign, grid, time_sharing).total_share
        times.append(time.perf_counter() - started)
    return statistics.median(times), share


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    resnet = profiles.load(profiles.shipped()["h200"], "resnet50")
    cases = {
        "resnet50 (H200), 11 types": (resnet, [Demand(f, 100.0, 0.05) for f in range(11)]),
        "synthetic, 100 types": (synthetic(100, rng), [Demand(f, rng.uniform(50, 500), rng.uniform(5e-3, 20e-3))
                                                       for f in range(100)]),
    }
    h200 = partitions.DEVICES["NVIDIA H200"]
    grids = {"green contexts": partitions.green_contexts(h200), "MPS percentages": partitions.mps(h200)}
    print("| case | shares | realign | time sharing | median s | total share |\n|---|---|---|---|---|---|")
    for name, (profile, demands) in cases.items():
        for label, grid in grids.items():
            for realign in (True, False):
                for turns in (False, True):
                    seconds, share = timed(profile, demands, realign, grid, turns, args.reps)
                    print(f"| {name} | {label} | {'on' if realign else 'off'} | {'on' if turns else 'off'} "
                          f"| {seconds:.3f} | {share:.3f} |")


if __name__ == "__main__":
    main()
