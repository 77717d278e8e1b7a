"""Where re-alignment pays: the GPU each policy needs over phones, server budgets, models, traces and
upload encodings, as medians over seeds with confidence intervals, and a plot of the map.

Each cell is one setting (model, network trace, upload encoding, number of phones, server budget)
simulated over ``--seeds`` seeds by `graft_fx.serving.seeds.over_seeds` on the shipped H200
profile with green-context partitions. Phones draw their speeds from the fitted population
(`graft_fx.serving.devices.PHONE_SPEEDS`), send at ``--rate`` per second with Gamma gaps of
coefficient of variation ``--cv``, and keep the raw image private (``private_input``: they
upload an activation, encoded as ``--uploads`` says), which is the split-inference regime; one
more setting per model lets them upload a JPEG of the image, where every phone offloads fully and
the policies tie.

The **server budget** axis is set, not derived: the SLO of a cell is the 90th percentile of the
phones' own time (head plus upload, probed once per model, trace and encoding) plus the budget, so
that nine requests in ten leave the server at least that budget. Runs last ``max(--duration-s,
10 x SLO)``.

Each row reports, per policy, the median least share and GPUs over seeds with their
order-statistic interval (`graft_fx.serving.stats`), the paired ratio per-fragment / graft, the
number of fragment types that carry requests, and the load per type (requests per second over
types). The plot shows per-fragment / graft against load per fragment type, one line per budget
with its interval as a band, one panel per model and trace.

    python benchmarks/bench_serving.py --quick                           # a few cells, minutes
    python benchmarks/bench_serving.py --json benchmarks/results/serving_sweep.json \\
        --plot benchmarks/results/serving_sweep.png                      # the full sweep, hours
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from graft_fx.serving import bundled, profiles, zoo
from graft_fx.serving.devices import PHONE_SPEEDS
from graft_fx.serving.measure import device_name
from graft_fx.serving.partitions import for_device
from graft_fx.serving.seeds import over_seeds
from graft_fx.serving.simulator import Scenario
from graft_fx.serving.stream import fragment_cuts
from graft_fx.serving.uploads import Upload
from graft_fx.serving.workload import generate, make_clients, model_costs

POLICIES = ("graft", "per-fragment", "bound")


def phone_time_p90(profile, costs, trace, rate, cv, seed) -> float:
    """The 90th percentile of head + upload seconds of phones that never upload the raw input."""
    clients = make_clients(500, PHONE_SPEEDS, [trace], rate, 1.0, cv=cv, seed=seed)
    cuts = fragment_cuts(profile, costs)
    w = generate(clients, costs, 20.0, seed, fragments=cuts[1:], local=False)
    return float(np.quantile([o.device_s + o.upload_s for o in w.origins], 0.9))


def cells(args):
    """(model, trace, upload, private, phones, budget_ms) for every cell of the sweep."""
    for model in args.models:
        for trace in args.traces:
            for upload in args.uploads:
                for phones in args.phones:
                    for budget in args.budgets_ms:
                        yield model, trace, upload, True, phones, budget
            yield model, trace, args.uploads[0], False, args.phones[0], args.budgets_ms[-1]


def run_cell(args, model_name, trace_name, upload, private, phones, budget_ms, cache) -> dict:
    if model_name not in cache:
        model, example = zoo.build(model_name)
        cache[model_name] = (profiles.load(profiles.shipped()["h200"], model_name), model, example)
    profile, model, example = cache[model_name]
    costs = model_costs(model, example, Upload(upload, args.jpeg_quality))
    trace = bundled(trace_name)
    p90 = phone_time_p90(profile, costs, trace, args.rate, args.cv, args.seed)
    slo_s = p90 + budget_ms / 1e3
    duration_s = max(args.duration_s, 10 * slo_s)

    partitioning = for_device(profile.device, "mps" if args.mps else "green-context")

    def scenario(seed):
        clients = make_clients(phones, PHONE_SPEEDS, [trace], args.rate, slo_s, cv=args.cv, seed=seed)
        return Scenario(profile, costs, tuple(clients), duration_s, seed, partitioning=partitioning,
                        private_input=private)

    started = time.perf_counter()
    summaries, (stream,) = over_seeds(scenario, range(args.seed, args.seed + args.seeds), POLICIES)
    by = {s.name: s for s in summaries}
    types = len({r.fragment for r in stream.requests})
    rate = len(stream.requests) / stream.duration_s
    return {"model": model_name, "trace": trace_name, "upload": upload, "private_input": private,
            "partitions": partitioning.mechanism,
            "phones": phones, "budget_ms": budget_ms, "slo_ms": round(slo_s * 1e3, 1),
            "duration_s": duration_s, "requests_per_s": rate, "types": types,
            "load_per_type": rate / max(types, 1), "attainable": int(stream.attainable.sum()),
            "requests": len(stream.requests), "seconds": time.perf_counter() - started,
            **{name: s.to_json() for name, s in by.items()}}


def fmt(m, spec=".3f"):
    if m is None:
        return "-"
    return f"{format(m['median'], spec)} [{format(m['low'], spec)}, {format(m['high'], spec)}]"


def markdown(rows: list[dict]) -> str:
    head = ("| model | trace | upload | partitions | phones | budget ms | SLO ms | types | load/type /s | graft share "
            "| per-fragment share | per-fragment / graft | graft GPUs | per-fragment GPUs |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        upload = r["upload"] if r["private_input"] else "JPEG allowed"
        lines.append(f"| {r['model']} | {r['trace']} | {upload} | {r.get('partitions', 'green-context')} | "
                     f"{r['phones']} | {r['budget_ms']} | "
                     f"{r['slo_ms']:.0f} | {r['types']} | {r['load_per_type']:.1f} | {fmt(r['graft']['share'])} | "
                     f"{fmt(r['per-fragment']['share'])} | {fmt(r['per-fragment']['vs_graft'], '.2f')} | "
                     f"{fmt(r['graft']['gpus'], '.0f')} | {fmt(r['per-fragment']['gpus'], '.0f')} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """The targets' figures: the worst and best ratio, and the median in the regime of the claim."""
    ratios = [(r, r["per-fragment"]["vs_graft"]) for r in rows if r["per-fragment"]["vs_graft"]]
    if not ratios:
        return "no cell where both policies reached the target"
    regime = [m["median"] for r, m in ratios if r["budget_ms"] <= 200 and r["types"] >= 3 and r["private_input"]]
    worst = min(ratios, key=lambda x: x[1]["median"])
    best = max(ratios, key=lambda x: x[1]["median"])
    out = [f"per-fragment / graft over {len(ratios)} cells: lowest median {worst[1]['median']:.2f} "
           f"[{worst[1]['low']:.2f}, {worst[1]['high']:.2f}] ({worst[0]['model']}, {worst[0]['phones']} phones, "
           f"{worst[0]['budget_ms']} ms), highest {best[1]['median']:.2f} ({best[0]['model']}, {best[0]['phones']} "
           f"phones, {best[0]['budget_ms']} ms)"]
    if regime:
        out.append(f"in the regime of the claim (budget <= 200 ms, 3+ types): median of cell medians "
                   f"{float(np.median(regime)):.2f}, best {max(regime):.2f}, over {len(regime)} cells")
    else:
        out.append("no cell in the regime of the claim (budget <= 200 ms with 3+ fragment types)")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = sorted({(r["model"], r["trace"], r["upload"], r.get("partitions", "green-context"))
                     for r in rows if r["private_input"]})
    cols = min(3, len(panels))
    rows_ = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5.5 * cols, 4 * rows_ + 0.4), squeeze=False)
    for ax, (model, trace, upload, kind) in zip(axes.flat, panels):
        mine = [r for r in rows if (r["model"], r["trace"], r["upload"], r.get("partitions", "green-context"),
                                    r["private_input"]) == (model, trace, upload, kind, True)]
        for i, budget in enumerate(sorted({r["budget_ms"] for r in mine})):
            pts = sorted((r["load_per_type"], r["per-fragment"]["vs_graft"]) for r in mine
                         if r["budget_ms"] == budget and r["per-fragment"]["vs_graft"])
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1]["median"] for p in pts], marker="o", color=f"C{i}", label=f"budget {budget} ms")
            ax.fill_between(x, [p[1]["low"] for p in pts], [p[1]["high"] for p in pts], color=f"C{i}", alpha=0.2)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("requests per second per fragment type")
        ax.set_ylabel("per-fragment / graft (GPU share)")
        ax.set_title(f"{model}, {trace}, {upload}, {kind}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("GPU share per-fragment needs over graft's\n(median over seeds, band: its confidence interval; "
                 "H200 profile)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2,vit_b_16")
    p.add_argument("--traces", default="lte-ghent-car-7,lte-verizon-up,3g-norway-bus-1")
    p.add_argument("--uploads", default="int8,fp16")
    p.add_argument("--phones", default="200,1000,5000,20000")
    p.add_argument("--budgets-ms", default="25,50,100,200,800")
    p.add_argument("--rate", type=float, default=0.5, help="requests per second per phone")
    p.add_argument("--cv", type=float, default=1.0)
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--mps", action="store_true", help="MPS percentages instead of green contexts")
    p.add_argument("--duration-s", type=float, default=10.0, help="at least; runs last 10 SLOs or more")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="resnet50 on one trace, int8, two loads, two budgets")
    p.add_argument("--json", type=Path, help="write the rows here (rewritten after every cell)")
    p.add_argument("--from-json", type=Path, nargs="+", metavar="PATH",
                   help="print and plot the rows of earlier runs instead of running")
    p.add_argument("--plot", type=Path, help="write the map as a PNG")
    args = p.parse_args()
    if args.quick:
        args.models, args.traces, args.uploads = "resnet50", "lte-ghent-car-7", "int8"
        args.phones, args.budgets_ms, args.seeds = "200,1000", "50,200", 3
    args.models, args.traces, args.uploads = (x.split(",") for x in (args.models, args.traces, args.uploads))
    args.phones = [int(x) for x in args.phones.split(",")]
    args.budgets_ms = [int(x) for x in args.budgets_ms.split(",")]
    todo, rows, cache = ([] if args.from_json else list(cells(args))), [], {}
    for path in args.from_json or ():
        rows += json.loads(path.read_text())["rows"]
    for cell in tqdm(todo, desc="cells", unit="cell", disable=not todo):
        rows.append(run_cell(args, *cell, cache))
        if args.json:
            args.json.write_text(json.dumps({"machine": device_name("cpu"), "profile": "NVIDIA H200, measured (shipped)",
                                             "args": {k: v for k, v in vars(args).items()}, "rows": rows},
                                            indent=1, default=str))
    print(markdown(rows))
    print(summary(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
