"""The GPU share each serving policy needs, over models, network traces and SLOs.

For each model (with its shipped H200 profile), each network (3G, FCC broadband, LTE uplink) and
two SLOs, phones of the four device classes send Poisson requests, cutting where a
Neurosurgeon-style client would, and `graft_fx.serving.simulator` finds the least total share
with which each policy answers 99% of the attainable requests on time.

The SLOs are set per (model, network) from what the phones can do, not picked by hand: *tight*
and *loose* are the 90th and 99th percentiles of a request's device + upload time, rounded up to
50 ms, so that about 90% and 99% of requests leave the server some budget. Networks and models
differ by over ten times in that time, so one fixed SLO would be either impossible or trivial.

    python benchmarks/bench_serving.py --markdown          # the full table for RESULTS.md
    python benchmarks/bench_serving.py --quick             # one model, one network
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from graft_fx.serving import bundled, profiles, zoo
from graft_fx.serving.measure import device_name
from graft_fx.serving.simulator import Scenario, fragment_cuts, simulate
from graft_fx.serving.workload import DEVICES, generate, make_clients, model_costs

NETWORKS = {"3G": "3g-norway-bus-1", "FCC": "fcc-8996", "LTE": "lte-verizon-up"}
SLO_QUANTILES = {"tight": 0.90, "loose": 0.99}


def slos(clients, costs, profile, duration_s, seed):
    """The tight and loose SLOs in seconds: quantiles of device + upload time, rounded up."""
    w = generate(clients, costs, duration_s, seed, fragments=fragment_cuts(profile, costs), local=False)
    spent = np.array([o.device_s + o.upload_s for o in w.origins])
    return {name: math.ceil(np.quantile(spent, q) * 20) / 20 for name, q in SLO_QUANTILES.items()}


def run(args) -> list[dict]:
    h200 = profiles.shipped()["h200"]
    rows = []
    settings = [(m, n) for m in args.models for n in args.networks]
    bar = tqdm(total=len(settings) * len(SLO_QUANTILES), desc="settings", unit="setting")
    for model_name, network in settings:
        model, example = zoo.build(model_name)
        profile = profiles.load(h200, model_name)
        costs = model_costs(model, example)
        trace = bundled(NETWORKS[network])
        probe = make_clients(args.clients, DEVICES.values(), [trace], args.rate, 1.0, seed=args.seed)
        for slo_name, slo_s in slos(probe, costs, profile, args.duration_s, args.seed).items():
            clients = make_clients(args.clients, DEVICES.values(), [trace], args.rate, slo_s, seed=args.seed)
            started = time.perf_counter()
            results = {r.name: r for r in simulate(Scenario(profile, costs, tuple(clients), args.duration_s, args.seed))}
            graft = results["graft"]
            rows.append({
                "model": model_name, "network": network, "trace": trace.name, "slo": slo_name,
                "slo_ms": slo_s * 1e3, "requests": graft.requests,
                "types": len({f for g in graft.plan.groups for f in g.fragments}) if graft.plan else None,
                "groups": len(graft.plan.groups) if graft.plan else None,
                **{f"share_{k}": r.share for k, r in results.items()},
                **{f"attained_{k}": r.slo_attainment for k, r in results.items() if k != "bound"},
                "seconds": time.perf_counter() - started,
            })
            bar.update()
    bar.close()
    return rows


def ratio(a, b):
    return None if a is None or b is None else a / b


def markdown(rows: list[dict]) -> str:
    head = ("| model | network | SLO ms | requests | types → groups | graft | per-fragment | full-model | bound "
            "| per-fragment / graft | full-model / graft | graft / bound |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(x, fmt=".3f"):
        return "-" if x is None else format(x, fmt)

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['network']} | {r['slo_ms']:.0f} ({r['slo']}) | {r['requests']} | "
            f"{r['types']} → {r['groups']} | {f(r['share_graft'])} | {f(r['share_per-fragment'])} | "
            f"{f(r['share_full-model'])} | {f(r['share_bound'])} | "
            f"{f(ratio(r['share_per-fragment'], r['share_graft']), '.2f')} | "
            f"{f(ratio(r['share_full-model'], r['share_graft']), '.2f')} | "
            f"{f(ratio(r['share_graft'], r['share_bound']), '.2f')} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    pf = [x for r in rows if (x := ratio(r["share_per-fragment"], r["share_graft"])) is not None]
    fm = [x for r in rows if (x := ratio(r["share_full-model"], r["share_graft"])) is not None]
    gb = [x for r in rows if (x := ratio(r["share_graft"], r["share_bound"])) is not None]
    out = []
    if pf:
        out.append(f"per-fragment / graft: max {max(pf):.2f}x, median {statistics.median(pf):.2f}x, "
                   f"min {min(pf):.2f}x over {len(pf)} settings")
    if fm:
        out.append(f"full-model / graft: max {max(fm):.2f}x, median {statistics.median(fm):.2f}x "
                   f"over {len(fm)} settings where full-model reached the target")
    if gb:
        out.append(f"graft / bound: median {statistics.median(gb):.2f}x, max {max(gb):.2f}x, "
                   f"within 20% in {sum(x <= 1.2 for x in gb)} of {len(gb)} settings")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.BENCHMARK_MODELS))
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1.0, help="requests per second per phone")
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="resnet50 on LTE only")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", type=Path, help="write rows and the machine description here")
    args = p.parse_args()
    args.models = ["resnet50"] if args.quick else args.models.split(",")
    args.networks = ["LTE"] if args.quick else args.networks.split(",")
    rows = run(args)
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=1))
    print(summary(rows))
    if args.json:
        doc = {"machine": device_name("cpu"),
               "profile": "measured on NVIDIA H200 (shipped)", "args": {k: v for k, v in vars(args).items()},
               "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
