"""The workload: phones that choose where to cut a model, and the request stream they send.

A `Client` is one phone: a `DeviceClass` (how fast it runs layers), a bandwidth `Trace` replayed
from a random offset (so phones on one trace do not see the same bandwidth at the same moment), an
`ArrivalProcess` (when its user asks for an inference) and an end-to-end SLO. For each inference,
sent at time ``t`` on the common clock, the phone weighs every candidate the way a
Neurosurgeon-style client does (Kang et al., ASPLOS 2017): run the head up to cut ``c``, upload
the tensor that crosses it, let the server run the tail, and take the cut with the least

    device_s(c) + upload_s(c, t) + server_estimate(c)

where the upload starts when the head finishes, at ``t + offset_s + device_s(c)`` on the trace,
and ``server_estimate`` is the caller's expected server latency of each fragment type (later it
comes from the latency profile; by default 0). Running the whole model on the phone is a candidate
too, as in Neurosurgeon: it costs only device time, and it sends no request (it is counted).
The reply from the server is small and not modelled. Ties go to the deeper cut: at the same
latency it leaves less work to the shared server.

The client knows the bandwidth its upload will get (it integrates the trace over the upload), so
its estimate of upload time is exact: a stand-in for a good bandwidth predictor, and it keeps the
choice and the resulting arrival consistent. The request reaches the server at
``t + device_s + upload_s`` and must be answered by ``t + SLO``, so the server's budget is
``SLO - device_s - upload_s``. A request whose budget is already gone when it arrives is still
sent (the server drops it) and counted. Each inference is independent: a phone does not queue
behind its own earlier inference, and concurrent uploads do not share bandwidth; at a few requests
per second per phone these are small effects.

Device time is ``overhead + head FLOPs / throughput`` (`DeviceClass.head_s`): a per-invocation
overhead (framework dispatch, copying the input, waking an accelerator), paid only when the head
runs any FLOPs, plus the head's FLOPs at an effective sustained rate. Model costs come from the
graph analysis (`model_costs`): the cut points with their bytes and FLOP fractions, and the
model's FLOPs per sample (a multiply-add counts as 2 FLOPs).

`generate` turns clients into a `Workload`: requests sorted by arrival, numbered in that order,
with where each came from, per-client counts and the fragment mix. It is deterministic for a seed:
each client draws its arrivals from its own stream spawned from the seed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..analysis import analyze
from ..cuts import CutPoint, located_cuts
from ..errors import GraftError
from .requests import Request
from .traces import Trace

ServerEstimate = Callable[[int], float]  # fragment index -> expected server latency in seconds


@dataclass(frozen=True)
class DeviceClass:
    """A phone's compute: ``gflops`` effective sustained GFLOP/s and a per-inference overhead."""

    name: str
    gflops: float
    overhead_ms: float

    def __post_init__(self):
        if not (self.gflops > 0 and self.overhead_ms >= 0):
            raise GraftError(f"device {self.name!r}: expected gflops > 0 and overhead_ms >= 0, "
                             f"got {self.gflops} and {self.overhead_ms}")

    def head_s(self, flops: float) -> float:
        """Seconds to run a head of ``flops`` FLOPs; an empty head (no FLOPs) costs nothing."""
        return self.overhead_ms / 1e3 + flops / (self.gflops * 1e9) if flops > 0 else 0.0


# Effective sustained rates for fp32 CNN inference as a phone app sees it, not peak: published
# mobile benchmarks (AI Benchmark, MLPerf Mobile, framework release notes) put a MobileNetV2-size
# model (0.6 GFLOP) at roughly a hundred-odd ms on an entry-level phone's CPU, a few tens of ms on
# the big cores of a mid-range one, under ten on a flagship GPU and a few on a recent NPU, and a
# ResNet-50 (8 GFLOP) at over a second on an entry-level CPU. The presets reproduce those
# magnitudes; they are assumptions to sweep, not measurements. Overheads are a few ms: framework
# dispatch and the input copy on a CPU, plus driver dispatch and synchronisation on an accelerator.
DEVICES = {
    # Entry-level phone: in-order Cortex-A53/A55-class cores, fp32 NEON kernels.
    "low-end": DeviceClass("low-end", gflops=5.0, overhead_ms=4.0),
    # Mid-range phone: a few out-of-order Cortex-A7x-class big cores, an optimised CPU backend.
    "mid-range": DeviceClass("mid-range", gflops=20.0, overhead_ms=2.0),
    # Flagship phone running the model on its GPU through a delegate (fp16 arithmetic inside).
    "high-end": DeviceClass("high-end", gflops=100.0, overhead_ms=3.0),
    # Recent flagship running the model on its NPU (reduced precision inside).
    "flagship-npu": DeviceClass("flagship-npu", gflops=300.0, overhead_ms=3.0),
}


@dataclass(frozen=True)
class ModelCosts:
    """What a client needs to know about a model, per sample.

    ``cuts`` in graph order (the first, when the model has one input, is the raw input: the server
    runs everything), ``flops`` of the whole model, ``input_bytes`` of its inputs.
    """

    cuts: tuple[CutPoint, ...]
    flops: float
    input_bytes: int

    def head_flops(self, fragment: int) -> float:
        return self.cuts[fragment].flops_before * self.flops


def model_costs(model: Any, example: Any) -> ModelCosts:
    """The `ModelCosts` of ``model`` from one graph analysis on ``example`` (batch dim 0)."""
    a = analyze(model, example, f"model ({type(model).__name__})")
    flops = sum(a.facts[n].flops_per_row for n in a.nodes)
    input_bytes = sum(a.facts[n].bytes_per_row for n in a.nodes if n.op == "placeholder")
    return ModelCosts(tuple(cut for cut, _ in located_cuts(a)), float(flops), input_bytes)


class ArrivalProcess(ABC):
    """A renewal process of inference requests on one phone, ``rate_per_s`` on average."""

    rate_per_s: float

    @abstractmethod
    def gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent inter-arrival times in seconds."""

    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """The arrival times in ``[0, duration_s)``, the first one gap after 0."""
        mean = self.rate_per_s * duration_s
        chunk = int(mean + 5 * math.sqrt(mean)) + 16
        t = np.cumsum(self.gaps(rng, chunk))
        while t[-1] < duration_s:
            t = np.concatenate((t, t[-1] + np.cumsum(self.gaps(rng, chunk))))
        return t[t < duration_s]


def _check_rate(rate_per_s: float) -> None:
    if not 0 < rate_per_s < math.inf:
        raise GraftError(f"arrival rate {rate_per_s}: expected a positive, finite rate per second")


@dataclass(frozen=True)
class Poisson(ArrivalProcess):
    """Exponential gaps: memoryless arrivals, a coefficient of variation of 1."""

    rate_per_s: float

    def __post_init__(self):
        _check_rate(self.rate_per_s)

    def gaps(self, rng, n):
        return rng.exponential(1 / self.rate_per_s, n)


@dataclass(frozen=True)
class Gamma(ArrivalProcess):
    """Gamma gaps with coefficient of variation ``cv``: bursty above 1, regular below, Poisson at 1.

    Shape ``k = 1 / cv**2`` and scale ``1 / (rate_per_s * k)`` give mean ``1 / rate_per_s`` and
    standard deviation ``cv / rate_per_s``.
    """

    rate_per_s: float
    cv: float

    def __post_init__(self):
        _check_rate(self.rate_per_s)
        if not 0 < self.cv < math.inf:
            raise GraftError(f"coefficient of variation {self.cv}: expected a positive number")

    def gaps(self, rng, n):
        k = 1 / self.cv**2
        return rng.gamma(k, 1 / (self.rate_per_s * k), n)


@dataclass(frozen=True)
class Client:
    """One phone; its trace is read at ``offset_s`` plus the common clock."""

    id: int
    device: DeviceClass
    trace: Trace
    offset_s: float
    arrivals: ArrivalProcess
    slo_s: float

    def __post_init__(self):
        if not (self.slo_s > 0 and math.isfinite(self.offset_s)):
            raise GraftError(f"client {self.id}: expected slo_s > 0 and a finite offset_s, "
                             f"got {self.slo_s} and {self.offset_s}")


@dataclass(frozen=True)
class Choice:
    """Where one inference runs: ``fragment`` indexes ``ModelCosts.cuts``; None is all on the phone.

    ``server_s`` is the client's estimate, part of its choice but not of the arrival time.
    """

    fragment: int | None
    device_s: float
    upload_s: float
    server_s: float

    @property
    def total_s(self) -> float:
        return self.device_s + self.upload_s + self.server_s


@dataclass(frozen=True)
class _Option:
    """One candidate's fixed costs: ``fragment`` (None: all on the phone), the head's FLOPs, the
    bytes it uploads and the server time the client expects."""

    fragment: int | None
    flops: float
    nbytes: int
    server_s: float


def _options(costs: ModelCosts, server_estimate: ServerEstimate | None,
             candidates: Iterable[int | None]) -> list[_Option]:
    """The candidates' costs in depth order (all on the phone deepest), each estimated once."""
    options = []
    for f in sorted(set(candidates), key=lambda f: len(costs.cuts) if f is None else f):
        if f is None:
            options.append(_Option(None, costs.flops, 0, 0.0))
        else:
            server_s = server_estimate(f) if server_estimate else 0.0
            options.append(_Option(f, costs.head_flops(f), costs.cuts[f].activation_bytes, server_s))
    return options


def _best(client: Client, send_s: float, options: Sequence[_Option]) -> Choice:
    """The option with the least total for a send at ``send_s``; the deepest among equals."""
    best = None
    for option in options:
        device_s = client.device.head_s(option.flops)
        upload_s = client.trace.upload_time_s(option.nbytes, client.offset_s + send_s + device_s)
        choice = Choice(option.fragment, device_s, upload_s, option.server_s)
        if best is None or choice.total_s <= best.total_s:
            best = choice
    if best is None:
        raise GraftError("no candidate cuts to choose from: expected at least one")
    return best


def choose(client: Client, costs: ModelCosts, send_s: float,
           server_estimate: ServerEstimate | None = None,
           candidates: Iterable[int | None] | None = None) -> Choice:
    """The candidate with the least device + upload + expected server time for a send at ``send_s``.

    ``candidates`` are fragment indices, None for all on the phone; by default every cut and None.
    Ties go to the deepest.
    """
    if candidates is None:
        candidates = [*range(len(costs.cuts)), None]
    return _best(client, send_s, _options(costs, server_estimate, candidates))


def _frontier(options: Sequence[_Option]) -> list[_Option]:
    """The options that can win: one is dropped when another is no worse on head FLOPs, bytes and
    server time, and is deeper or sends fewer bytes or expects less server time.

    Device time grows with head FLOPs, and an upload that starts no later ends no later, and
    strictly earlier with fewer bytes; so the dropped option's total is larger, or equal while it
    is shallower (which the tie rule breaks the same way). Fewer FLOPs alone do not drop one: both
    uploads may wait out the same zero-bandwidth stretch and end together. So `_best` over the
    frontier picks what it picks over all options, with fewer uploads to integrate.
    """
    def beats(j: int, i: int) -> bool:
        a, b = options[j], options[i]
        no_worse = a.flops <= b.flops and a.nbytes <= b.nbytes and a.server_s <= b.server_s
        return no_worse and (j > i or a.nbytes < b.nbytes or a.server_s < b.server_s)

    return [o for i, o in enumerate(options) if not any(beats(j, i) for j in range(len(options)) if j != i)]


@dataclass(frozen=True)
class Origin:
    """Where a request came from: its client, when the phone started, and how long each leg took."""

    client: int
    send_s: float
    device_s: float
    upload_s: float


@dataclass(frozen=True)
class ClientStats:
    """One client's inferences: ``sent`` to the server (``late``: of those, with no budget left on
    arrival) and ``local``, run entirely on the phone (``local_late``: of those, over the SLO)."""

    sent: int = 0
    late: int = 0
    local: int = 0
    local_late: int = 0


@dataclass(frozen=True)
class Workload:
    """A request stream over ``duration_s`` seconds of sends.

    ``requests`` are sorted by arrival at the server (then client id, then send time) and
    ``requests[i].id == i``; ``origins[i]`` says where ``requests[i]`` came from. ``clients`` maps
    client id to its counts; ``mix`` maps fragment index to its number of requests.
    """

    requests: tuple[Request, ...]
    origins: tuple[Origin, ...]
    clients: dict[int, ClientStats]
    mix: dict[int, int]
    duration_s: float

    @property
    def late(self) -> int:
        """Requests that arrive with a budget of zero or less: the server will drop them."""
        return sum(s.late for s in self.clients.values())

    @property
    def local(self) -> int:
        """Inferences that ran entirely on a phone and sent no request."""
        return sum(s.local for s in self.clients.values())


def generate(clients: Sequence[Client], costs: ModelCosts, duration_s: float, seed: int = 0,
             server_estimate: ServerEstimate | None = None,
             fragments: Iterable[int] | None = None, local: bool = True) -> Workload:
    """The requests ``clients`` send over ``[0, duration_s)``, each at the cut it chooses.

    ``fragments`` limits the cuts a client may choose (indices into ``costs.cuts``; default all),
    and ``local=False`` forbids running all on the phone: ``fragments=[0], local=False`` is the
    every-client-uploads-raw-input baseline. Indices keep their meaning either way.
    """
    if not duration_s > 0:
        raise GraftError(f"duration {duration_s}: expected a positive number of seconds")
    ids = [c.id for c in clients]
    if len(set(ids)) != len(ids):
        raise GraftError(f"client ids {ids}: expected them distinct")
    fragments = range(len(costs.cuts)) if fragments is None else list(fragments)
    if any(not 0 <= f < len(costs.cuts) for f in fragments):
        raise GraftError(f"fragments {fragments}: expected indices into {len(costs.cuts)} cuts")
    options = _frontier(_options(costs, server_estimate, [*fragments, *([None] if local else [])]))
    if not options:
        raise GraftError("fragments=[] and local=False: expected at least one candidate")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(clients))]
    stats = {c.id: ClientStats() for c in clients}
    sent = []  # (arrival, client id, send time, deadline, choice)
    for client, rng in zip(clients, rngs):
        for send_s in map(float, client.arrivals.times(rng, duration_s)):
            choice = _best(client, send_s, options)
            if choice.fragment is None:
                stats[client.id] = _count_local(stats[client.id], choice.device_s > client.slo_s)
                continue
            arrival_s, deadline_s = send_s + choice.device_s + choice.upload_s, send_s + client.slo_s
            stats[client.id] = _count_sent(stats[client.id], deadline_s - arrival_s <= 0)
            sent.append((arrival_s, client.id, send_s, deadline_s, choice))
    sent.sort(key=lambda s: s[:3])
    requests = tuple(Request(deadline_s, arrival_s, i, choice.fragment)
                     for i, (arrival_s, _, _, deadline_s, choice) in enumerate(sent))
    origins = tuple(Origin(client_id, send_s, choice.device_s, choice.upload_s)
                    for _, client_id, send_s, _, choice in sent)
    mix = dict(sorted(Counter(r.fragment for r in requests).items()))
    return Workload(requests, origins, stats, mix, float(duration_s))


def _count_sent(stats: ClientStats, late: bool) -> ClientStats:
    return replace(stats, sent=stats.sent + 1, late=stats.late + late)


def _count_local(stats: ClientStats, late: bool) -> ClientStats:
    return replace(stats, local=stats.local + 1, local_late=stats.local_late + late)


def make_clients(n: int, devices: Iterable[DeviceClass], traces: Iterable[Trace],
                 rate_per_s: float, slo_s: float, cv: float | None = None,
                 seed: int = 0) -> list[Client]:
    """``n`` clients with ids 0..n-1 spread over every (device, trace) pair in turn.

    Client ``i`` gets ``devices[i % D]`` and ``traces[(i // D) % T]``, so any ``D * T`` consecutive
    clients cover each pair once. Arrivals are `Poisson` at ``rate_per_s``, or `Gamma` with
    coefficient of variation ``cv``. Trace offsets are uniform over one loop of the trace, drawn
    from ``seed``.
    """
    devices, traces = list(devices), list(traces)
    if n < 0 or not devices or not traces:
        raise GraftError(f"expected n >= 0 and some devices and traces, got n={n}, "
                         f"{len(devices)} devices, {len(traces)} traces")
    arrivals = Poisson(rate_per_s) if cv is None else Gamma(rate_per_s, cv)
    rng = np.random.default_rng(seed)
    clients = []
    for i in range(n):
        device, trace = devices[i % len(devices)], traces[(i // len(devices)) % len(traces)]
        offset_s = float(rng.uniform(0, trace.duration_s))
        clients.append(Client(i, device, trace, offset_s, arrivals, slo_s))
    return clients
