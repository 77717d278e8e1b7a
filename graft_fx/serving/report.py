"""What `graft simulate` shows: a table of the policies, their JSON, and a plot.

The share column is in GPUs (1.00 is one whole accelerator); each row's figures are those of the
least share that met the target (99% of the *attainable* requests on time: those the network
left enough budget to be served at all), and ``-`` marks what a policy does not have (the fluid
bound is not simulated; a policy that never met the target has no share).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .simulator import POLICIES, PolicyResult

COLUMNS = ("policy", "share (GPUs)", "vs graft", "SLO attained", "goodput/s", "p50 ms", "p99 ms",
           "dropped", "attainable", "requests")


def to_json(config: Mapping[str, Any], results: Sequence[PolicyResult]) -> dict[str, Any]:
    """``{"config": ..., "policies": [...]}``, with the graft plan's groups when it has one."""
    doc: dict[str, Any] = {"config": dict(config), "policies": [r.to_json() for r in results]}
    graft = next((r for r in results if r.name == "graft" and r.plan is not None), None)
    if graft is not None:
        doc["graft_plan"] = [{"fragments": list(g.fragments), "share": g.share, "replicas": g.replicas,
                              "duty_cycle_ms": g.duty_cycle_s * 1e3, "latency_ms": g.latency_s * 1e3}
                             for g in graft.plan.groups]
    return doc


def table(config: Mapping[str, Any], results: Sequence[PolicyResult]) -> str:
    """A plain-text table of the policies, headed by what was simulated and on which profile."""
    graft = next((r.share for r in results if r.name == "graft"), None)
    rows = [COLUMNS] + [_row(r, graft) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"{config['model']} on {config['trace']}, SLO {config['slo_ms']:g} ms, {config['clients']} phones "
            f"at {config['rate_per_s']:g}/s for {config['duration_s']:g} s (seed {config['seed']})"
            + (f", re-planned every {config['replan_s']:g} s (shares averaged over time)"
               if config.get("replan_s") else "") + "\n"
            f"profile: {config['profile']}\n")
    return head + "\n".join(lines)


def _row(r: PolicyResult, graft: float | None) -> tuple[str, ...]:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    ratio = "-" if graft is None or r.share is None else f"{r.share / graft:.2f}x"
    attained = "-" if r.slo_attainment is None else f"{r.slo_attainment:.2%}"
    return (r.name, num(r.share, ".3f"), ratio, attained, num(r.goodput_rps, ".1f"), num(r.p50_ms, ".0f"),
            num(r.p99_ms, ".0f"), num(r.dropped, "d"), str(r.attainable), str(r.requests))


def plot(config: Mapping[str, Any], results: Sequence[PolicyResult], path: str | Path) -> None:
    """A PNG: the share each policy needs (bars), and the CDF of end-to-end latency of the
    answered requests per simulated policy, with the SLO marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
