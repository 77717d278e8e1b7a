"""Runtime fidelity: predicted against measured SLO attainment, `graft serve` on this machine.

For each model and each number of phones, `graft serve` makes the request stream (the same
workload generator as `graft simulate`), plans the graft policy for it on this machine's CPU
profile (measured once and cached), predicts its SLO attainment with the simulator, then builds
the realigned instances and replays the stream through the wall-clock runtime, executing the real
model. The table shows both attainments and their difference in percentage points, with the
plan's share of the machine (the load is near the planned capacity where the plan needs the
whole CPU), answered and rejected requests, the end-to-end p50/p99, and the pace the runtime saw:
the median and 90th percentile, over its batches, of a batch's measured time over its price
(`pace.Pace`; the slowest partition's), which says how far the host ran from its calibrated
profile during the cell. With ``--repeats`` every cell runs that many times, and a last table
gives each cell's median difference.

Two switches test the runtime against a host whose speed drifts, on purpose:
``--neighbour BURN:IDLE`` runs a noisy neighbour beside each cell, a process that keeps one core
busy for BURN seconds, then idles IDLE seconds, over and over, while the stream is replayed (it
starts with the replay, after the calibration, which would otherwise size the plan for it and
refuse the load); ``--pace off`` pins the
runtime's pace to 1 (`pace.MAX_PACE`), the ablation that shows what learning it is worth.

    python benchmarks/bench_fidelity.py                       # resnet50 and mobilenet_v2, 60 s each
    python benchmarks/bench_fidelity.py --models resnet50 --clients 20,40 --duration-s 30 --json out.json
    python benchmarks/bench_fidelity.py --models resnet50 --clients 30 --repeats 3
    python benchmarks/bench_fidelity.py --models resnet50 --clients 30 --neighbour 5:5 --pace off

Each cell is one `graft serve --json` run in this process (the CPU profile is cached after the
first), so a cell takes its duration plus building the instances (about 10 s for resnet50).
Run it on an otherwise idle machine: other work on the cores is time the profile did not see.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

from graft_fx.cli import SERVE_DEFAULTS  # noqa: E402
from graft_fx.cli import main as graft  # noqa: E402
from graft_fx.serving import loadgen, pace  # noqa: E402

CLIENTS = {"resnet50": (10, 20, 30), "mobilenet_v2": (40, 80, 160, 240)}
COLUMNS = ("model", "phones", "requests", "share", "predicted", "measured", "diff pp", "answered", "rejected",
           "p50 ms", "p99 ms", "pace p50", "pace p90")


NEIGHBOUR = """
import sys, time
burn, idle = float(sys.argv[1]), float(sys.argv[2])
while True:
    end = time.monotonic() + burn
    while time.monotonic() < end:
        pass
    time.sleep(idle)
"""


@contextlib.contextmanager
def neighbour(spec: str | None):
    """While the replay runs: a process beside it that burns one core ``BURN`` seconds in every
    ``BURN + IDLE`` (`loadgen.replay` wrapped for the cell)."""
    if spec is None:
        yield
        return
    burn, idle = (float(x) for x in spec.split(":"))
    plain = loadgen.replay

    def replay(*args, **kwargs):
        process = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(burn), str(idle)])
        try:
            return plain(*args, **kwargs)
        finally:
            process.kill()
            process.wait()

    loadgen.replay = replay
    try:
        yield
    finally:
        loadgen.replay = plain


def run(model: str, clients: int, args: argparse.Namespace) -> dict:
    """One `graft serve` run, with the neighbour if asked; its JSON document."""
    with tempfile.TemporaryDirectory() as tmp, neighbour(args.neighbour):
        out = Path(tmp) / "served.json"
        code = graft(["serve", "--model", model, "--clients", str(clients), "--duration-s", str(args.duration_s),
                     "--slo-ms", str(args.slo_ms), "--seed", str(args.seed), "--json", str(out)])
        if code != 0:
            return {"model": model, "clients": clients, "error": f"graft serve exited with {code}"}
        doc = json.loads(out.read_text())
    share = sum(p["share"] for p in doc["plan"]["partitions"])
    return {"model": model, "clients": clients, "share": share, **{k: v for k, v in doc.items() if k != "config"}}


def row(r: dict) -> tuple[str, ...]:
    if "error" in r:
        return (r["model"], str(r["clients"]), r["error"]) + ("",) * (len(COLUMNS) - 3)
    diff = (r["slo_attainment"] - r["predicted_slo_attainment"]) * 100
    return (r["model"], str(r["clients"]), str(r["requests"]), f"{r['share']:.2f}",
            f"{r['predicted_slo_attainment']:.1%}", f"{r['slo_attainment']:.1%}", f"{diff:+.1f}",
            str(r["completed"]), str(r["rejected"]), f"{r['p50_ms']:.0f}" if r["p50_ms"] else "-",
            f"{r['p99_ms']:.0f}" if r["p99_ms"] else "-", *_pace(r))


def _pace(r: dict) -> tuple[str, str]:
    """The slowest partition's median and 90th percentile of batch time over price."""
    paced = [p for p in r.get("pace", ()) if p["batches"]]
    if not paced:
        return "-", "-"
    return tuple(f"{max(p[q] for p in paced):.2f}x" for q in ("p50", "p90"))


def medians(results: list[dict]) -> str:
    """Per cell (model, phones): the runs, and the median, smallest and largest difference."""
    cells: dict[tuple[str, int], list[float]] = {}
    for r in results:
        if "error" not in r:
            cells.setdefault((r["model"], r["clients"]), []).append(
                (r["slo_attainment"] - r["predicted_slo_attainment"]) * 100)
    lines = ["model  phones  runs  median diff pp  range pp"]
    for (model, clients), diffs in cells.items():
        lines.append(f"{model}  {clients}  {len(diffs)}  {statistics.median(diffs):+.1f}  "
                     f"[{min(diffs):+.1f}, {max(diffs):+.1f}]")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    rows = [COLUMNS] + [row(r) for r in results]
    widths = [max(len(x[i]) for x in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--clients", help="comma-separated phone counts (default: a sweep per model)")
    p.add_argument("--duration-s", type=float, default=SERVE_DEFAULTS["duration_s"])
    p.add_argument("--slo-ms", type=float, default=SERVE_DEFAULTS["slo_ms"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="runs of every cell")
    p.add_argument("--neighbour", metavar="BURN:IDLE", help="a noisy neighbour beside every cell (seconds)")
    p.add_argument("--pace", choices=("on", "off"), default="on", help="off: pin the runtime's pace to 1")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.pace == "off":
        pace.MAX_PACE = 1.0
    results = []
    for model in args.models.split(","):
        counts = [int(c) for c in args.clients.split(",")] if args.clients else CLIENTS[model]
        for clients in counts:
            for _ in range(args.repeats):
                results.append(run(model, clients, args))
                print(table(results[-1:]).splitlines()[-1], file=sys.stderr)
    print(f"machine: {describe()}\nSLO {args.slo_ms:g} ms, {args.duration_s:g} s of sending per cell, seed {args.seed}, "
          f"neighbour {args.neighbour or 'none'}, pace {args.pace}")
    print(table(results))
    if args.repeats > 1:
        print(medians(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(), "slo_ms": args.slo_ms, "duration_s": args.duration_s,
                                         "seed": args.seed, "repeats": args.repeats, "neighbour": args.neighbour,
                                         "pace": args.pace, "results": results}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
