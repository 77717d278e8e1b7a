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
runs any FLOPs, plus the head's FLOPs at an effective sustained rate. Phones come from a few
device classes or from a population with a continuum of speeds (`graft_fx.serving.devices`).
Model costs come from the graph analysis (`model_costs`): the cut points with their FLOP
fractions and the tensors that cross them, and the model's FLOPs per sample (a multiply-add counts
as 2 FLOPs). What a client uploads at a cut is that tensor as its `Upload` encodes it
(`graft_fx.serving.uploads`): by default fp32; a JPEG at the raw input and fp16 activations are
what a phone app would more likely send.

Arrivals are stationary renewal processes (`ArrivalProcess`): Poisson, or Gamma gaps for bursty
or regular users, each started at a random moment of its steady state.

`generate` turns clients into a `Workload`: requests sorted by arrival, numbered in that order,
with where each came from, per-client counts and the fragment mix. It is deterministic for a seed:
each client draws its arrivals from its own stream spawned from the seed. It makes the choices one
client at a time, vectorised over that client's sends: a phone's send times do not depend on its
choices, so it draws them all first, times every candidate's upload from every send in one
`Trace.upload_times_s` call, and takes per send the least total, the deepest among equals. That
is the same floating-point arithmetic, in the same order, as choosing send by send (`choose`), so
the stream is identical; it only moves the work out of Python's loop, which at tens of thousands
of phones sending for a minute is the difference between minutes and seconds.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch.fx as fx

from ..analysis import Analysis, analyze
from ..cuts import CutPoint, located_cuts
from ..errors import GraftError
from .devices import DEVICES as DEVICES  # re-exported: callers import the presets from here
from .devices import DeviceClass, LogNormalSpeeds
from .requests import Request
from .traces import Trace
from .uploads import CutTensor, Upload

ServerEstimate = Callable[[int], float]  # fragment index -> expected server latency in seconds


@dataclass(frozen=True)
class ModelCosts:
    """What a client needs to know about a model, per sample.

    ``cuts`` in graph order (the first, when the model has one input, is the raw input: the server
    runs everything), ``flops`` of the whole model, ``input_bytes`` of its inputs, ``tensors`` the
    tensor that crosses each cut (``()`` when unknown, as in costs written by hand) and ``upload``
    how clients encode what they send (`graft_fx.serving.uploads`; by default fp32).

    Raises GraftError when ``tensors`` is neither empty nor one per cut, or when it is empty and
    ``upload`` is not the default (the encoded size needs the tensors' shapes and dtypes).
    """

    cuts: tuple[CutPoint, ...]
    flops: float
    input_bytes: int
    tensors: tuple[CutTensor, ...] = ()
    upload: Upload = Upload()

    def __post_init__(self):
        if self.tensors and len(self.tensors) != len(self.cuts):
            raise GraftError(f"{len(self.tensors)} cut tensors for {len(self.cuts)} cuts: expected one per cut")
        if not self.tensors and self.upload != Upload():
            raise GraftError(f"upload {self.upload}: encoding needs the cut tensors; expected costs from "
                             f"model_costs, or tensors given")

    def head_flops(self, fragment: int) -> float:
        return self.cuts[fragment].flops_before * self.flops

    def upload_bytes(self, fragment: int) -> int:
        """Bytes a client uploads when it cuts at ``fragment``: the cut's tensor as ``upload``
        encodes it, or the cut's ``activation_bytes`` when the tensors are unknown."""
        if not self.tensors:
            return self.cuts[fragment].activation_bytes
        return self.upload.nbytes(self.tensors[fragment])

    def encoded(self, upload: Upload) -> ModelCosts:
        """These costs with clients encoding their uploads as ``upload``."""
        return replace(self, upload=upload)


def model_costs(model: Any, example: Any, upload: Upload = Upload()) -> ModelCosts:
    """The `ModelCosts` of ``model`` from one graph analysis on ``example`` (batch dim 0), with
    clients encoding their uploads as ``upload``."""
    a = analyze(model, example, f"model ({type(model).__name__})")
    flops = sum(a.facts[n].flops_per_row for n in a.nodes)
    input_bytes = sum(a.facts[n].bytes_per_row for n in a.nodes if n.op == "placeholder")
    located = located_cuts(a)
    tensors = tuple(_cut_tensor(a, a.nodes[pos]) for _, pos in located)
    return ModelCosts(tuple(cut for cut, _ in located), float(flops), input_bytes, tensors, upload)


def _cut_tensor(a: Analysis, node: fx.Node) -> CutTensor:
    """The tensor ``node`` makes, which crosses a cut (so its batch is dim 0, alone)."""
    facts = a.facts[node]
    return CutTensor(tuple(int(d) for d in facts.row_shape), facts.dtype, node.op == "placeholder")


class ArrivalProcess(ABC):
    """A stationary renewal process of inference requests on one phone, ``rate_per_s`` on average.

    Stationary: the clock starts at a random moment of a process that has run forever, not at an
    arrival. The first arrival after 0 is then drawn from the equilibrium forward-recurrence
    distribution (density ``(1 - F(x)) * rate_per_s`` for gap distribution F), and the expected
    number of arrivals in any interval of ``d`` seconds is ``rate_per_s * d``, however bursty the
    gaps, so short runs are not biased at their start.
    """

    rate_per_s: float

    @abstractmethod
    def gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent inter-arrival times in seconds."""

    @abstractmethod
    def first_gap(self, rng: np.random.Generator) -> float:
        """Seconds from a random moment to the next arrival: one forward-recurrence time."""

    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """The arrival times in ``[0, duration_s)``, the first one `first_gap` after 0."""
        mean = self.rate_per_s * duration_s
        chunk = int(mean + 5 * math.sqrt(mean)) + 16
        t = np.cumsum(np.concatenate(([self.first_gap(rng)], self.gaps(rng, chunk - 1))))
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

    def first_gap(self, rng):
        """A gap itself: exponential gaps are memoryless."""
        return float(rng.exponential(1 / self.rate_per_s))


@dataclass(frozen=True)
class Gamma(ArrivalProcess):
    """Gamma gaps with coefficient of variation ``cv``: bursty above 1, regular below, Poisson at 1.

    Shape ``k = 1 / cv**2`` and scale ``1 / (rate_per_s * k)`` give mean ``1 / rate_per_s`` and
    standard deviation ``cv / rate_per_s``. The first arrival is a uniform fraction of a
    length-biased gap, which for Gamma(k, scale) is Gamma(k + 1, scale): its mean is
    ``(1 + cv**2) / (2 * rate_per_s)``, longer than a gap when bursty (the inspection paradox).
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

    def first_gap(self, rng):
        k = 1 / self.cv**2
        return float(rng.uniform() * rng.gamma(k + 1, 1 / (self.rate_per_s * k)))


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
            options.append(_Option(f, costs.head_flops(f), costs.upload_bytes(f), server_s))
    return options


def _best(client: Client, sends_s: np.ndarray, options: Sequence[_Option]) -> tuple[np.ndarray, ...]:
    """For each send at ``sends_s``, the option with the least total, the deepest among equals:
    its index in ``options``, its device seconds and its upload seconds (three arrays)."""
    if not options:
        raise GraftError("no candidate cuts to choose from: expected at least one")
    device = np.array([client.device.head_s(option.flops) for option in options])[:, None]
    nbytes = np.array([option.nbytes for option in options])[:, None]
    upload = client.trace.upload_times_s(nbytes, client.offset_s + sends_s + device)  # options x sends
    totals = device + upload + np.array([option.server_s for option in options])[:, None]
    best, least = np.zeros(len(sends_s), dtype=np.intp), totals[0]
    for k in range(1, len(options)):  # in depth order, a later option wins ties
        deeper = totals[k] <= least
        best[deeper] = k
        least = np.where(deeper, totals[k], least)
    return best, device[best, 0], upload[best, np.arange(len(sends_s))]


def choose(client: Client, costs: ModelCosts, send_s: float,
           server_estimate: ServerEstimate | None = None,
           candidates: Iterable[int | None] | None = None) -> Choice:
    """The candidate with the least device + upload + expected server time for a send at ``send_s``.

    ``candidates`` are fragment indices, None for all on the phone; by default every cut and None.
    Ties go to the deepest.
    """
    if candidates is None:
        candidates = [*range(len(costs.cuts)), None]
    options = _options(costs, server_estimate, candidates)
    (best,), (device_s,), (upload_s,) = _best(client, np.array([send_s], dtype=np.float64), options)
    return Choice(options[best].fragment, float(device_s), float(upload_s), options[best].server_s)


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
    stats, parts = {}, []
    for client, rng in zip(clients, rngs):
        stats[client.id], part = _client_sends(client, client.arrivals.times(rng, duration_s), options)
        parts.append(part)
    sent = _joined(parts)
    order = np.lexsort((sent.send_s, sent.client, sent.arrival_s))  # stable, as sorting tuples is
    arrival_s, client_id, send_s, deadline_s, fragment, device_s, upload_s = (c[order].tolist() for c in sent)
    requests = tuple(Request(*r) for r in zip(deadline_s, arrival_s, range(len(order)), fragment))
    origins = tuple(Origin(*o) for o in zip(client_id, send_s, device_s, upload_s))
    mix = dict(sorted(Counter(fragment).items()))
    return Workload(requests, origins, stats, mix, float(duration_s))


class _Sent(NamedTuple):
    """Requests as columns: one client's in send order, or many clients' one after another."""

    arrival_s: np.ndarray
    client: np.ndarray
    send_s: np.ndarray
    deadline_s: np.ndarray
    fragment: np.ndarray
    device_s: np.ndarray
    upload_s: np.ndarray


def _client_sends(client: Client, sends_s: np.ndarray,
                  options: Sequence[_Option]) -> tuple[ClientStats, _Sent]:
    """What ``client`` does with its inferences at ``sends_s``: its counts, and the requests it sends."""
    best, device_s, upload_s = _best(client, sends_s, options)
    local = np.array([option.fragment is None for option in options])[best]
    fragment = np.array([-1 if option.fragment is None else option.fragment for option in options])[best]
    arrival_s, deadline_s = sends_s + device_s + upload_s, sends_s + client.slo_s
    sent = ~local
    stats = ClientStats(sent=int(sent.sum()), late=int((sent & (deadline_s - arrival_s <= 0)).sum()),
                        local=int(local.sum()), local_late=int((device_s[local] > client.slo_s).sum()))
    ids = np.full(len(sends_s), client.id)
    every = _Sent(arrival_s, ids, sends_s, deadline_s, fragment, device_s, upload_s)
    return stats, _Sent(*(column[sent] for column in every))


def _joined(parts: Sequence[_Sent]) -> _Sent:
    """``parts`` one after another (no requests for no parts)."""
    if not parts:
        return _Sent(*[np.zeros(0, dtype=int)] * len(_Sent._fields))
    return _Sent(*(np.concatenate(column) for column in zip(*parts)))


def make_clients(n: int, devices: Iterable[DeviceClass] | LogNormalSpeeds, traces: Iterable[Trace],
                 rate_per_s: float, slo_s: float, cv: float | None = None,
                 seed: int = 0) -> list[Client]:
    """``n`` clients with ids 0..n-1 spread over every (device, trace) pair in turn.

    ``devices`` is a list of device classes or a population of phones (`LogNormalSpeeds`). With a
    list, client ``i`` gets ``devices[i % D]`` and ``traces[(i // D) % T]``, so any ``D * T``
    consecutive clients cover each pair once. With a population, client ``i`` gets its own device,
    drawn from ``seed``, and ``traces[i % T]``. Arrivals are `Poisson` at ``rate_per_s`` when
    ``cv`` is None or 1, else `Gamma` with coefficient of variation ``cv``. Trace offsets are
    uniform over one loop of the trace, drawn from ``seed``.

    Raises GraftError unless ``n >= 0`` and there are some devices and traces.
    """
    population = devices if isinstance(devices, LogNormalSpeeds) else None
    classes, traces = ([] if population else list(devices)), list(traces)
    if n < 0 or not (population or classes) or not traces:
        raise GraftError(f"expected n >= 0 and some devices and traces, got n={n}, "
                         f"{len(classes)} devices, {len(traces)} traces")
    arrivals = Poisson(rate_per_s) if cv is None or cv == 1 else Gamma(rate_per_s, cv)
    rng = np.random.default_rng(seed)
    on_trace = [traces[(i // (len(classes) or 1)) % len(traces)] for i in range(n)]
    offsets = [float(rng.uniform(0, trace.duration_s)) for trace in on_trace]
    phones = population.draw(rng, n) if population else [classes[i % len(classes)] for i in range(n)]
    return [Client(i, phone, trace, offset_s, arrivals, slo_s)
            for i, (phone, trace, offset_s) in enumerate(zip(phones, on_trace, offsets))]
