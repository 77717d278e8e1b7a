"""The ``graft`` command.

    graft simulate [--models resnet50[,mobilenet_v2...]] [--trace lte-ghent-car-7] [--slo-ms 350]
                   [--clients 2000] [--seeds 5] [--mps] [--buckets pow2] [--json PATH] [--plot PATH]
    graft serve [--model resnet50] [--slo-ms 1000] [--clients 20] [--duration-s 60] [--buckets 1,2,4,8]
                [--json PATH]
    graft serve --http [--port 8000]

``simulate`` sizes a deployment: phones of many speeds on one network trace send requests for one
model or several, each cutting it where a Neurosurgeon-style client would and uploading what a
phone app would (an int8 or fp16 activation, the image staying on the phone unless
--no-private-input lets it send a JPEG), and every serving policy (`graft_fx.serving.simulator`)
serves the same request stream on the same latency profile. It prints, per policy, the least GPU
share, as partitions a GPU can make, that answers 99% of the attainable requests on time, the
whole GPUs it packs onto, SLO attainment, goodput, latency percentiles, drops and the plans.

The profile is a GPU's by default, because that is where batching pays (on a CPU latency grows
about linearly with batch size): the H200 profile measured for the benchmark models ships with
the package; other models on a GPU preset get the roofline model (`--profile h200|a100|t4`),
`--profile cpu` measures this machine (once: the profile is cached), and a path loads a JSON
profile. The output says which.

``serve`` runs the plan for real: it makes the same request stream from the same flags, plans the
graft policy for it on a profile of the machine it runs on (measured once and cached, then
calibrated to the machine's speed at start), realigns
each planned group's tails into one module, and either replays the stream through the runtime on
the wall clock, printing measured against predicted SLO attainment, or, with --http, serves the
Open Inference Protocol (KServe v2) until interrupted, each fragment type a model named
"{model}.{cut}".
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from .errors import GraftError

# The defaults sit in the regime where re-alignment can pay: phones keep the image private and
# upload an int8 activation, so they cut at several places, over a fast LTE network, with server
# budgets of a few tens of ms (the SLO less about 280 ms on the phone and the uplink for 90% of
# requests).
DEFAULTS = {"models": "resnet50", "trace": "lte-ghent-car-7", "slo_ms": 350.0, "clients": 2000,
            "rate_per_s": 0.5, "duration_s": 60.0, "profile": "h200", "seed": 0, "seeds": 1, "cv": 1.0,
            "upload": "int8", "jpeg_quality": 90, "devices": "fitted", "private_input": True}
# Serving on this machine's CPU: a CPU runs a resnet50 tail in tens to hundreds of ms, so the SLO
# is a second, and the load is what two cores serve (near the planned capacity).
SERVE_DEFAULTS = DEFAULTS | {"slo_ms": 1000.0, "clients": 20, "profile": "cpu"}
SUSPECT_CALIBRATION = 3.0  # a device this many times slower than its profile is probably busy
GRACEFUL_S = 10.0  # on Ctrl-C, in-flight HTTP requests get this long; the runtime then rejects the rest


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except GraftError as e:
        print(f"graft: error: {e}", file=sys.stderr)
        return 2


def _number(kind: type, least: float, strict: bool, what: str, most: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` above ``least`` (or at least ``least``) and at most
    ``most``, else an error that argparse reports with the flag's name."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < least or strict and value == least or value > most:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


POSITIVE = _number(float, 0, True, "a positive finite number")
COUNT = _number(int, 1, False, "a whole number of at least 1")
SEED = _number(int, 0, False, "a whole number of at least 0")
QUALITY = _number(int, 1, False, "a whole number from 1 to 100", most=100)


def _policies(text: str) -> list[str]:
    from .serving.simulator import POLICIES

    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of distinct policies of "
                                         f"{', '.join(POLICIES)}, got {text!r}")
    return names


def _buckets(text: str) -> tuple[int, ...]:
    """``pow2`` (`graft_fx.buckets.POWERS_OF_TWO`) or comma-separated batch sizes, ascending."""
    from .buckets import POWERS_OF_TWO, check_buckets

    if text.strip() == "pow2":
        return POWERS_OF_TWO
    expected = (f"expected pow2 ({','.join(map(str, POWERS_OF_TWO))}) or comma-separated batch sizes of at least 1 "
                f"in increasing order, such as 1,2,4,8; got {text!r}")
    try:
        return check_buckets([int(b) for b in text.split(",")])
    except (ValueError, GraftError):
        raise argparse.ArgumentTypeError(expected) from None


def _serve_header(profile: Any, partitioning: Any, buckets: tuple[int, ...] | None, requests: int, plan: Any) -> str:
    """What ``serve`` prints before it runs: the profile, the partitions, the padding (with
    ``--buckets``) and the graft ``plan`` for ``requests`` requests, one line per partition kind."""
    from .serving import report

    return "\n".join([f"profile: {profile.label}", f"partitions: {partitioning}"]
                     + ([] if buckets is None else [report.padding_line(buckets)])
                     + [f"graft plan for {requests} requests, {plan.total_share:.2f} of the device:"]
                     + report.describe_plan(plan, profile.fragments))


def _models(text: str) -> list[str]:
    """Comma-separated torchvision classifiers, each at most once."""
    import torchvision

    from .serving.zoo import BENCHMARK_MODELS

    names = [n.strip() for n in text.split(",") if n.strip()]
    known = torchvision.models.list_models(module=torchvision.models)
    for name in names:
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown model {name!r}: expected torchvision classification models, "
                                             f"such as {', '.join(BENCHMARK_MODELS)}")
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated model names, got {text!r}")
    return names


def _profile(spec: str) -> str:
    from .serving.roofline import ACCELERATORS

    if not (Path(spec).is_file() or spec == "cpu" or spec in ACCELERATORS):
        raise argparse.ArgumentTypeError(f"expected a JSON profile path, cpu, or a GPU preset "
                                         f"({', '.join(sorted(a for a in ACCELERATORS if a != 'cpu'))}), "
                                         f"got {spec!r}")
    return spec


def _presets() -> list[str]:
    """The GPU presets, each with where its latencies come from."""
    from .serving import profiles
    from .serving.roofline import ACCELERATORS

    shipped = profiles.shipped()
    return [f"{name}: measured for {', '.join(profiles.models_in(shipped[name]))}, else modelled" if name in shipped
            else f"{name}: modelled" for name in sorted(ACCELERATORS) if name != "cpu"]


def _output(text: str) -> Path:
    """A file to write, tried before anything runs: opened for appending (and removed again if
    it did not exist), so a path that cannot be written fails now, not after the simulation."""
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: expected a file in an existing folder")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {e.strerror}") from None
    return path


def parser() -> argparse.ArgumentParser:
    from .serving.simulator import POLICIES

    p = argparse.ArgumentParser(prog="graft", description="DNN re-alignment for split inference.")
    commands = p.add_subparsers(required=True, metavar="COMMAND")
    s = commands.add_parser("simulate", help="replay a request stream through every serving policy",
                            description=__doc__.split("\n\n")[2].replace("\n", " "))
    s.set_defaults(run=simulate)
    _workload(s, DEFAULTS)
    s.add_argument("--policies", type=_policies, default=list(POLICIES),
                   help="comma-separated, of graft (realigned groups), per-fragment (one instance per fragment "
                        "type), full-model (phones upload the image), bound (fluid lower bound) (default: all)")
    s.add_argument("--profile", type=_profile, default=DEFAULTS["profile"],
                   help=f"a GPU preset ({', '.join(_presets())}), cpu (this machine, measured once and cached), "
                        "or a JSON profile path (default: %(default)s)")
    s.add_argument("--mps", action="store_true",
                   help="partition GPUs with MPS percentages instead of green contexts (SM counts)")
    s.add_argument("--replan-s", type=POSITIVE, metavar="SECONDS",
                   help="re-plan every so many seconds on the rates of the window before, instead of "
                        "planning once for the whole run; shares are then averaged over time")
    s.add_argument("--seeds", type=COUNT, default=DEFAULTS["seeds"],
                   help="seeds to simulate (phones, trace offsets, arrivals); the table shows the first, and a "
                        "second table each policy's median with its confidence interval (default: %(default)s)")
    s.add_argument("--plot", type=_output, metavar="PATH", help="write a PNG: share per policy, latency CDFs")
    _padding(s, "the planner sizes groups and the simulator prices batches at their padded rows")

    v = commands.add_parser("serve", help="run the planned, realigned groups for real",
                            description=next(p for p in __doc__.split("\n\n") if p.startswith("``serve``"))
                            .replace("\n", " "))
    v.set_defaults(run=serve)
    _workload(v, SERVE_DEFAULTS)
    v.add_argument("--profile", type=_profile, default=SERVE_DEFAULTS["profile"],
                   help="cpu (this machine, measured once and cached) or the path of a JSON profile measured on "
                        "the device the runtime runs on (default: %(default)s)")
    v.add_argument("--device", default="cpu", help="the torch device to run on, e.g. cpu or cuda:0 "
                                                   "(default: %(default)s)")
    v.add_argument("--http", action="store_true",
                   help="serve the Open Inference Protocol (KServe v2) over HTTP until interrupted, instead of "
                        "replaying the request stream")
    v.add_argument("--host", default="127.0.0.1", help="with --http: the address to listen on (default: %(default)s)")
    v.add_argument("--port", type=_number(int, 0, False, "a port from 0 to 65535", most=65535), default=8000,
                   help="with --http: the port to listen on (default: %(default)s)")
    _padding(v, "the realigned modules pad their rows, and the planner and the runtime price batches padded")
    return p


def _padding(s: argparse.ArgumentParser, what: str) -> None:
    """The ``--buckets`` flag: padded batching (`graft_fx.buckets`)."""
    s.add_argument("--buckets", type=_buckets, metavar="SIZES",
                   help="pad each fragment's rows in a batch up to the next of these batch sizes, so that a "
                        f"static-shape executor (CUDA graphs, compiled graphs) serves every mix: {what}; "
                        "comma-separated ascending sizes such as 1,2,4,8, or pow2 for 1,2,4,...,256 "
                        "(default: no padding)")


def _workload(s: argparse.ArgumentParser, defaults: dict) -> None:
    """The flags that make a request stream, which simulate and serve share."""
    from .serving.traces import bundled_direction, bundled_names
    from .serving.uploads import BYTES_PER_ELEMENT
    from .serving.zoo import BENCHMARK_MODELS

    s.add_argument("--models", "--model", type=_models, default=defaults["models"],
                   help=f"torchvision classification models served at once, comma-separated; the phones are "
                        f"split evenly among them and their plans share the GPUs; the shipped H200 profile "
                        f"measured {', '.join(BENCHMARK_MODELS)} (default: %(default)s)")
    s.add_argument("--trace", default=defaults["trace"],
                   help="a bundled trace (" + ", ".join(f"{n}: {bundled_direction(n)}" for n in bundled_names())
                        + "; a downlink trace stands in for the uplink) or a trace file (default: %(default)s)")
    s.add_argument("--trace-format", default="auto",
                   choices=["auto", "pensieve", "mahimahi", "ghent", "gnettrack"],
                   help="the format of a trace file (default: %(default)s, from its first line)")
    s.add_argument("--slo-ms", type=POSITIVE, default=defaults["slo_ms"],
                   help="end-to-end latency SLO per inference (default: %(default)s)")
    s.add_argument("--clients", type=COUNT, default=defaults["clients"], help="phones (default: %(default)s)")
    s.add_argument("--rate", type=POSITIVE, default=defaults["rate_per_s"],
                   help="inferences per second per phone (default: %(default)s)")
    s.add_argument("--cv", type=POSITIVE, default=defaults["cv"],
                   help="coefficient of variation of a phone's gaps between inferences (Gamma gaps): "
                        "1 is Poisson, above 1 bursty, below 1 regular (default: %(default)s)")
    s.add_argument("--upload", choices=list(BYTES_PER_ELEMENT), default=defaults["upload"],
                   help="how phones send an activation: 4, 2 or 1 byte per element, int8 adding a per-tensor "
                        "scale and zero point (default: %(default)s; the library's default is fp32)")
    s.add_argument("--jpeg-quality", type=QUALITY, default=defaults["jpeg_quality"],
                   help="quality of the JPEG a phone sends when it uploads the input image, 1 to 100 "
                        "(default: %(default)s, about 16 kB at 224x224; the library's default sends it as a tensor)")
    s.add_argument("--devices", choices=["fitted", "presets"], default=defaults["devices"],
                   help="fitted: each phone's speed drawn from a log-normal fitted to public phone benchmarks; "
                        "presets: the four device classes in turn (default: %(default)s)")
    s.add_argument("--private-input", action=argparse.BooleanOptionalAction, default=defaults["private_input"],
                   help="phones never upload the raw input, only activations (privacy-preserving split "
                        "inference; the full-model baseline still uploads the image) (default: %(default)s)")
    s.add_argument("--duration-s", type=POSITIVE, default=defaults["duration_s"],
                   help="seconds of sending to simulate or replay (default: %(default)s)")
    s.add_argument("--seed", type=SEED, default=defaults["seed"], help="the first seed (default: %(default)s)")
    s.add_argument("--json", type=_output, metavar="PATH", help="write the results as JSON")


def simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .serving import report
    from .serving.seeds import over_seeds

    policies = args.policies
    if args.replan_s is not None and args.replan_s < args.slo_ms / 1e3:
        raise GraftError(f"--replan-s {args.replan_s:g} with --slo-ms {args.slo_ms:g}: expected a window of at "
                         "least the SLO (a plan should outlive the requests it was made for)")
    setup = _served(args, "mps" if args.mps else "green-context")
    served = setup.served
    seeds = range(args.seed, args.seed + args.seeds)
    with tqdm(desc="simulating", total=len(policies) * len(seeds) * len(served), unit="policy",
              file=sys.stderr) as bar:
        summaries, streams = over_seeds(lambda seed: _scenarios(args, seed, setup), seeds, policies,
                                        progress=lambda name: bar.update())
    results = [s.results[0] for s in summaries]
    config = _config(args, setup) | {
        "policies": policies, "seeds": args.seeds, "replan_s": args.replan_s}
    fragments = {profile.model: profile.fragments for profile, _, _ in served}
    print(report.table(config, results, fragments, streams))
    if len(seeds) > 1:
        print("\n" + report.seeds_table(summaries))
    if args.json:
        doc = report.to_json(config, results, fragments, streams)
        doc["over_seeds"] = [s.to_json() for s in summaries]
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(config, results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def serve(args: argparse.Namespace) -> int:
    """Plan the graft policy on this machine's profile for the request stream the flags make, build
    the runtime, and either replay that stream through it or serve HTTP."""
    import torch
    from tqdm import tqdm

    from .serving import report
    from .serving.deployment import deploy
    from .serving.loadgen import replay
    from .serving.measure import calibrate
    from .serving.planner import check_buckets_fit
    from .serving.runtime import Runtime
    from .serving.simulator import simulate as simulate_policies
    from .serving.stream import make_stream

    if len(args.models) != 1:
        raise GraftError(f"--models {','.join(args.models)}: graft serve runs one model; start one server per model")
    if args.profile != "cpu" and not Path(args.profile).is_file():
        raise GraftError(f"--profile {args.profile}: the runtime prices batches on the machine it runs on; expected "
                         "cpu or a JSON profile measured on this device")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GraftError(f"--device {args.device}: this machine has no CUDA device; expected cpu")
    setup = _served(args, "green-context")
    (profile, costs, (model, example)), = setup.served
    check_buckets_fit(profile, args.buckets)  # before the calibration, which takes a while
    print("calibrating the profile to this device's speed now", file=sys.stderr)
    profile = calibrate(profile, model, example, device=device)
    slowest = max(profile.meta["scaled"])
    if slowest > SUSPECT_CALIBRATION:
        print(f"warning: this device runs {slowest:.1f}x slower than when its profile was measured; if something "
              "else is using it, the plan is sized for that", file=sys.stderr)
    setup = setup._replace(served=[(profile, costs, (model, example))])
    (scenario,) = _scenarios(args, args.seed, setup)
    stream = make_stream(scenario)
    (planned,) = simulate_policies(scenario, ["graft"], stream=stream)
    if planned.plan is None:
        raise GraftError("no plan: no request of this stream is attainable on this machine (see graft simulate)")
    gpus = deploy(planned.plan, profile).gpus
    if gpus > 1:
        raise GraftError(f"the plan for this load needs {gpus} devices ({planned.plan.total_share:.2f} of one); graft "
                         "serve runs on one: expected fewer --clients, a lower --rate or a larger --slo-ms")
    if planned.share is None:
        print(f"warning: no plan that fits this device answers 99% of the attainable requests on time; serving the "
              f"largest ({planned.plan.total_share:.2f} of the device)", file=sys.stderr)
    print(_serve_header(profile, setup.partitioning, args.buckets, len(stream.requests), planned.plan))
    print("building the realigned instances and checking them against the model", file=sys.stderr)
    runtime = Runtime.from_model(model, example, profile, planned.plan, device=args.device)  # padded as planned
    gc.freeze()  # what exists now lives as long as the server: keep the collector's full passes off it
    try:
        if args.http:
            from .serving.http import serve as serve_http

            print(f"serving {', '.join(s.name for s in runtime.fragments)} at http://{args.host}:{args.port}/v2 "
                  "(Ctrl-C stops)")
            serve_http(runtime, host=args.host, port=args.port, graceful_s=GRACEFUL_S)
            return 0
        with tqdm(desc="replaying", total=len(stream.requests), unit="request", file=sys.stderr) as bar:
            measured = replay(runtime, stream, progress=bar.update, seed=args.seed)
    finally:
        runtime.close(drain=False)
    doc = measured.summary(stream) | {"predicted_slo_attainment": planned.slo_attainment, "pace": runtime.pace()}
    print(report.served_table(doc))
    if args.json:
        config = _config(args, setup) | {"device": args.device}
        args.json.write_text(json.dumps(doc | {"config": config, "plan": report.plan_json(planned.plan,
                                                                                         profile.fragments)}, indent=1))
        print(f"wrote {args.json}")
    return 0


class _Setup(NamedTuple):
    """What the flags resolve to: ``served[m]`` is model m's ``(profile, costs, (model, example))``,
    ``partitioning`` that of the first profile's device, ``trace`` the network trace."""

    served: list
    partitioning: Any
    trace: Any


def _served(args: argparse.Namespace, mechanism: str) -> _Setup:
    """Check the flags, then resolve the trace and build each model, its profile and its costs
    (`_Setup`)."""
    from tqdm import tqdm

    from .serving import zoo
    from .serving.partitions import for_device
    from .serving.profiles import load as load_profile
    from .serving.resolve import profile_for, trace_for
    from .serving.seeds import MIN_DURATION_BUDGETS
    from .serving.uploads import Upload
    from .serving.workload import model_costs

    if args.duration_s < MIN_DURATION_BUDGETS * args.slo_ms / 1e3:
        raise GraftError(f"--duration-s {args.duration_s:g} with --slo-ms {args.slo_ms:g}: expected a run of at "
                         f"least {MIN_DURATION_BUDGETS} times the SLO ({MIN_DURATION_BUDGETS * args.slo_ms / 1e3:g} s)")
    if Path(args.profile).is_file():  # a malformed file is reported before any model is built
        for name in args.models:
            load_profile(args.profile, name)
    trace = trace_for(args.trace, args.trace_format)
    if args.clients < len(args.models):
        raise GraftError(f"--clients {args.clients} for {len(args.models)} models: expected at least one phone each")
    upload = Upload(args.upload, args.jpeg_quality)
    served = []
    with tqdm(desc="measuring", unit="timing", leave=False, file=sys.stderr, disable=args.profile != "cpu") as bar:
        for name in args.models:
            model, example = zoo.build(name)
            served.append((profile_for(args.profile, name, model, example, progress=bar),
                           model_costs(model, example, upload), (model, example)))
    return _Setup(served, for_device(served[0][0].device, mechanism), trace)


def _scenarios(args: argparse.Namespace, seed: int, setup: _Setup) -> list:
    """One scenario per model: phone i runs model i mod M; model m's phones draw from seed * M + m."""
    from .serving.devices import DEVICES, PHONE_SPEEDS
    from .serving.simulator import Scenario
    from .serving.workload import make_clients

    devices = PHONE_SPEEDS if args.devices == "fitted" else DEVICES.values()
    out = []
    served = setup.served
    for m, (profile, costs, _) in enumerate(served):
        phones = len(range(m, args.clients, len(served)))
        clients = make_clients(phones, devices, [setup.trace], args.rate, args.slo_ms / 1e3, cv=args.cv,
                               seed=seed * len(served) + m)
        out.append(Scenario(profile, costs, tuple(clients), args.duration_s, seed, partitioning=setup.partitioning,
                            replan_s=getattr(args, "replan_s", None), private_input=args.private_input,
                            buckets=args.buckets))
    return out


def _config(args: argparse.Namespace, setup: _Setup) -> dict:
    """The run's settings as the JSON and the table header show them."""
    return {"model": ",".join(args.models), "models": args.models, "trace": setup.trace.name,
            "trace_format": args.trace_format, "slo_ms": args.slo_ms, "clients": args.clients,
            "rate_per_s": args.rate, "duration_s": args.duration_s,
            "profile": "; ".join(sorted({profile.label for profile, _, _ in setup.served})),
            "device": setup.served[0][0].device, "partitions": str(setup.partitioning), "seed": args.seed, "cv": args.cv,
            "upload": args.upload, "jpeg_quality": args.jpeg_quality, "devices": args.devices,
            "private_input": args.private_input, "buckets": None if args.buckets is None else list(args.buckets)}


if __name__ == "__main__":
    sys.exit(main())
