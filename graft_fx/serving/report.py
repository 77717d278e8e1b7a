"""What `graft simulate` shows: a table of the policies, the plans behind them, their JSON, and a plot.

Each row's figures are those of the least share that met the target (99% of the *attainable*
requests on time: those the network left enough budget to be served at all); ``-`` marks what a
policy does not have (the fluid bound is not simulated; a policy that never met the target has no
share). `COLUMN_NOTES` says what each column measures, and the table prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .planner import Plan
from .results import PolicyResult
from .seeds import Summary
from .simulator import POLICIES
from .stats import Median
from .stream import Stream

COLUMNS = ("policy", "GPUs", "share", "vs graft", "on time", "on time (attainable)", "attainable", "goodput/s",
           "p50 ms", "p99 ms", "dropped")
COLUMN_NOTES = (
    "GPUs: whole devices the plan's partitions pack onto (memory and partition limits included); "
    "share: the plan's partitions in GPUs (1.00 = one device); vs graft: share over graft's share",
    "on time: answered within the SLO, of all requests and of the attainable ones (the target is 99% of "
    "those); attainable: requests some server could answer in time (full-model's phones send other "
    "requests); goodput: on-time answers per second",
    "p50/p99: end-to-end latency of answered requests, from the phone starting the inference; the "
    "policy starts each batch at its latest start, so answers come late but within their deadlines",
    "*: some partition is smaller than the profile's smallest measured share (latency extrapolated as 1/share)",
)


Fragments = Mapping[str, Sequence[str]]  # model -> the cut name of each of its fragment types


def to_json(config: Mapping[str, Any], results: Sequence[PolicyResult], fragments: Fragments,
            streams: Sequence[Stream] = ()) -> dict[str, Any]:
    """``{"config", "columns", "requests", "policies"}``: each policy with each model's plan, its
    groups by cut name and its partitions (``"plans"``, by model) and, for one model, the same as
    ``"plan"``; ``"requests"`` says per model how many requests any server could answer."""
    doc: dict[str, Any] = {"config": dict(config), "columns": list(COLUMN_NOTES), "policies": []}
    if streams:
        doc["requests"] = {m: attainability(st, config["slo_ms"]) for m, st in zip(fragments, streams)}
    for r in results:
        entry = r.to_json()
        plans = {p.model: plan_json(p.plan, fragments.get(p.model, ())) for p in (r.parts or (r,))
                 if p.plan is not None}
        if plans:
            entry["plans"] = plans
            if len(plans) == 1:
                entry["plan"] = next(iter(plans.values()))
        doc["policies"].append(entry)
    return doc


def plan_json(plan: Plan, fragments: Sequence[str]) -> dict[str, Any]:
    """A plan's groups (by cut name, with share, replicas and timings) and partitions."""
    name = plan.describe
    return {
        "groups": [{"fragments": [_cut(fragments, f) for f in g.fragments], "partition": name(g.share),
                    "share": round(g.share, 4), "replicas": g.replicas,
                    "duty_cycle_ms": round(g.duty_cycle_s * 1e3, 3), "latency_ms": round(g.latency_s * 1e3, 3),
                    "budget_ms": round(g.budget_s * 1e3, 3), "extrapolated": g.extrapolated}
                   for g in plan.groups],
        "partitions": [{"share": round(p.share, 4), "groups": list(p.groups)} for p in plan.partitions],
    }


def _cut(fragments: Sequence[str], f: int) -> str:
    return fragments[f] if f < len(fragments) else str(f)


def attainability(stream: Stream, slo_ms: float) -> dict[str, Any]:
    """How many requests some server could answer in time, and what the phone and the network
    took of the SLO (medians, ms)."""
    n, ok = len(stream.requests), int(stream.attainable.sum())
    med = (lambda a: round(float(np.median(a)) * 1e3, 1) if len(a) else None)  # noqa: E731
    return {"requests": n, "attainable": ok, "slo_ms": slo_ms, "median_device_ms": med(stream.device_s),
            "median_upload_ms": med(stream.upload_s),
            "upload_over_slo": int((stream.upload_s * 1e3 >= slo_ms).sum()) if len(stream.upload_s) else 0}


def why_unattainable(facts: Mapping[str, Any]) -> str:
    """One line on how many requests can meet the SLO at all, and why not, when many cannot."""
    n, ok = facts["requests"], facts["attainable"]
    if n == 0:
        return "no requests: no phone sent any in the simulated time"
    line = f"{ok} of {n} requests ({ok / n:.1%}) can be answered in time by some server"
    if ok >= 0.9 * n:
        return line
    over = facts["upload_over_slo"]
    because = (f"; for {over} ({over / n:.0%}) the upload alone exceeds the {facts['slo_ms']:g} ms SLO"
               if over else "")
    return (f"{line}{because} (median phone time {facts['median_device_ms']} ms, median upload "
            f"{facts['median_upload_ms']} ms): the rest arrive with less budget than their fragment takes "
            "alone on a whole GPU, and graft and per-fragment lose them alike (full-model's phones upload "
            "the image instead, and its attainable column counts its own)")


def padding_line(buckets: Sequence[int]) -> str:
    """The header line that says batches are padded (``--buckets``), in the style of the
    ``profile:`` and ``partitions:`` lines."""
    return f"padding: each fragment's rows up to buckets {','.join(map(str, buckets))}"


def table(config: Mapping[str, Any], results: Sequence[PolicyResult], fragments: Fragments,
          streams: Sequence[Stream] = ()) -> str:
    """A plain-text report: what was simulated, on which profile and partitions, how many requests
    could be served at all, one row per policy, the column notes, and each policy's plan."""
    graft = next((r.share for r in results if r.name == "graft"), None)
    lines = _aligned([COLUMNS] + [_row(r, graft) for r in results])
    head = [f"{config['model']} on {config['trace']}, SLO {config['slo_ms']:g} ms, {config['clients']} phones "
            f"at {config['rate_per_s']:g}/s for {config['duration_s']:g} s (seed {config['seed']})"
            + (f", re-planned every {config['replan_s']:g} s (shares averaged over time)"
               if config.get("replan_s") else ""),
            f"profile: {config['profile']}"]
    if config.get("partitions"):
        head.append(f"partitions: {config['partitions']}")
    if config.get("buckets"):
        head.append(padding_line(config["buckets"]))
    several = len(fragments) > 1
    for model, stream in zip(fragments, streams):
        head.append((f"{model}: " if several else "") + why_unattainable(attainability(stream, config["slo_ms"])))
    plans = [f"{r.name} plan{f' ({p.model})' if several else ''}: {line}" for r in results if r.share is not None
             for p in (r.parts or (r,)) if p.plan is not None
             for line in describe_plan(p.plan, fragments.get(p.model, ()))]
    deployed = [f"{r.name} on {r.gpus} GPU{'s' if r.gpus != 1 else ''}: {line}" for r in results
                if r.deployment is not None and r.gpus is not None for line in str(r.deployment).splitlines()]
    if any(r.deployment is not None and not r.deployment.memory_checked for r in results if r.gpus is not None):
        deployed.append("memory not checked: the profile has no memory figures or its device's memory is unknown")
    return "\n".join(head + [""] + lines + [""] + [f"  {note}" for note in COLUMN_NOTES] + [""] + misses(results)
                     + plans + deployed)


def describe_plan(plan: Plan, fragments: Sequence[str]) -> list[str]:
    """One line per partition kind: its groups by cut name, its size, how many, and the cycle."""
    name = plan.describe
    lines = []
    for p in dict.fromkeys(plan.partitions):  # one line per distinct partition
        count = plan.partitions.count(p)
        groups = " + ".join("[" + ", ".join(_cut(fragments, f) for f in plan.groups[g].fragments) + "]"
                            for g in p.groups)
        cycle = plan.groups[p.groups[0]].duty_cycle_s * 1e3
        turns = " taking turns" if len(p.groups) > 1 else ""
        star = "*" if any(plan.groups[g].extrapolated for g in p.groups) else ""
        lines.append(f"{count} x {name(p.share)}{star}: {groups}{turns}, cycle {cycle:.1f} ms")
    return lines


def seeds_table(summaries: Sequence[Summary]) -> str:
    """Each policy's median over seeds with its confidence interval (`seeds.over_seeds`)."""
    head = ("policy", "reached", "share", "vs graft", "GPUs", "on time (attainable)")
    rows = [head] + [(s.name, f"{s.reached}/{len(s.results)}", _median(s.share, ".3f"), _median(s.vs_graft, ".2f"),
                      _median(s.gpus, ".0f"), _median(s.attainable_attainment, ".1%")) for s in summaries]
    lines = _aligned(rows)
    coverage = next((s.share.coverage for s in summaries if s.share is not None), None)
    note = (f"over {len(summaries[0].results)} seeds: median [interval covering the true median with "
            f"probability {coverage:.1%}], of the seeds where the policy reached the target" if coverage
            else f"over {len(summaries[0].results)} seeds: no policy reached the target on any seed")
    return "\n".join([note] + lines)


SERVED_ROWS = (("requests", "requests", "d"), ("completed", "answered with an output", "d"),
               ("rejected", "rejected", "d"), ("slo_attainment", "SLO attainment, measured", ".1%"),
               ("predicted_slo_attainment", "SLO attainment, predicted", ".1%"),
               ("p50_ms", "p50 ms, end to end", ".1f"), ("p99_ms", "p99 ms, end to end", ".1f"))


def served_table(doc: Mapping[str, Any]) -> str:
    """What `graft serve` measured (``doc``: `loadgen.Measured.summary`, the prediction and
    `Runtime.pace`) as a table, with the rejections by reason and each partition's batch time
    over price under it."""
    rows = [("figure", "value")] + [(label, "-" if doc.get(key) is None else format(doc[key], fmt))
                                    for key, label, fmt in SERVED_ROWS]
    reasons = ", ".join(f"{reason} {n}" for reason, n in doc.get("rejected_by_reason", {}).items())
    paces = [f"partition {i}: {p['p50']:.2f}x median, {p['p90']:.2f}x p90 over {p['batches']} batches"
             for i, p in enumerate(doc.get("pace", ())) if p["batches"]]
    return "\n".join(_aligned(rows) + ([f"rejected by reason: {reasons}"] if reasons else [])
                     + (["batch time over price: " + "; ".join(paces)] if paces else []))


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` (the first the header) as text columns: the first left-aligned, the others
    right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _median(m: Median | None, fmt: str) -> str:
    return "-" if m is None else f"{format(m.value, fmt)} [{format(m.low, fmt)}, {format(m.high, fmt)}]"


def _row(r: PolicyResult, graft: float | None) -> tuple[str, ...]:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    ratio = "-" if graft is None or r.share is None else f"{_figure(r.share / graft, 2)}x"
    share = ("-" if r.share is None else _figure(r.share, 3)) + ("*" if r.extrapolated and r.share is not None else "")
    return (r.name, num(r.gpus, "d"), share, ratio, num(r.slo_attainment, ".1%"), num(r.attainable_attainment, ".1%"),
            str(r.attainable), num(r.goodput_rps, ".1f"), num(r.p50_ms, ".0f"), num(r.p99_ms, ".0f"),
            num(r.dropped, "d"))


def _figure(x: float, places: int) -> str:
    """``places`` decimals, or as many significant digits when that would print a small number as 0."""
    return format(x, f".{places}f") if x >= 10 ** (1 - places) else format(x, f".{places}g")


def misses(results: Sequence[PolicyResult]) -> list[str]:
    """For each simulated policy that reached no target: the most it tried, and how close it came."""
    lines = []
    several = any(r.parts for r in results)
    for r in (p for result in results for p in (result.parts or (result,))):
        if r.share is None and r.searched:
            share, on_time = max(r.searched)
            closest = max(a for _, a in r.searched)
            model = f" ({r.model})" if several else ""
            lines.append(f"{r.name}{model}: none of the {len(r.searched)} plans simulated reached the target; the largest "
                         f"({_figure(share, 3)} of a GPU) answered {on_time:.1%} of the attainable requests on time, "
                         f"the closest {closest:.1%}")
    return lines


def plot(config: Mapping[str, Any], results: Sequence[PolicyResult], path: str | Path) -> None:
    """A PNG: the share each policy needs (bars), and the CDF of end-to-end latency of the
    answered requests per simulated policy, with the SLO marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (shares, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    colour = {name: f"C{i}" for i, name in enumerate(POLICIES)}
    named = [r for r in results if r.share is not None]
    bars = shares.bar([r.name for r in named], [r.share for r in named], color=[colour[r.name] for r in named])
    shares.bar_label(bars, fmt="%.3f")
    shares.set_ylabel("GPUs needed for 99% of attainable requests")
    shares.set_title(f"{config['model']}, {config['trace']}, SLO {config['slo_ms']:g} ms")
    for r in results:
        if len(r.latencies_ms):
            y = np.arange(1, len(r.latencies_ms) + 1) / r.requests
            cdf.plot(r.latencies_ms, y, label=r.name, color=colour[r.name])
    cdf.axvline(config["slo_ms"], color="grey", linestyle="--", label="SLO")
    cdf.set_xlabel("end-to-end latency (ms)")
    cdf.set_ylabel("fraction of requests answered")
    cdf.set_ylim(0, 1)
    cdf.legend(loc="lower right")
    fig.suptitle(f"profile: {config['profile']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
