"""The serving runtime: a plan's realigned groups running for real, on the wall clock.

A `Runtime` is built from a `planner.Plan`, the latency `Profile` it was planned on, and one
`instances.Instance` per group (the group's members' tails realigned into one module). It runs
what the simulator replays, with the same three pieces of policy, each written once:

- **routing** (`routing.Router`): a request of a fragment type goes to the group that serves it,
  and to that group's replicas in turn;
- **pricing** (`pricing.group_latency`): what a batch of a group costs on its partition (at its
  padded rows when the instances pad to ``buckets``);
- **batching** (`batching.Turns`): each partition keeps one EDF `BatchQueue` per group it runs,
  waiting for a batch's latest start when the group is alone there, taking turns, the most
  urgent first, when the partition is time-shared, and dropping a request as soon as it can no
  longer make its deadline.

One worker thread per partition drives its `Turns` on ``time.monotonic``: it polls when a
request arrives, when its executor becomes free and at the queues' next wakeup, runs the batch a
poll starts on the group's instance, and hands each request its own output row. A batch that
runs longer than priced makes its requests late, not lost: the next poll is told the true time.

**Pace.** The simulator's batches take exactly their price; the wall clock's do not, and a host
whose speed drifts makes every batch of a slow stretch late. Each partition learns how much
slower than priced its recent batches ran (`pace.Pace`, the median ratio of the last five, at
least 1) and prices every batch that much dearer, so that in a slow stretch it starts batches
earlier and refuses at the door what it can no longer serve. `Runtime.pace` reports it.

**Placement.** On a CPU each partition's worker runs PyTorch's intra-op work on its share of the
threads (``torch.set_num_threads`` is per thread: a partition of 1 of 2 cores runs on 1), so the
partitions together use the cores the profile measured. On CUDA each partition runs on its own
stream; a partition smaller than the device gets a green context of its SMs
(``torch.cuda.green_contexts.GreenContext``, PyTorch 2.10+ with CUDA 12.8+), and where green
contexts are missing or refused it falls back to a plain stream on the whole device, with a
warning: the groups then share all SMs, so latencies can exceed the profile's under load.

**Padded batching** (``buckets``, `graft_fx.buckets`): each instance's realigned module pads
every present member's rows up to the next bucket, so that a static-shape executor (a CUDA graph,
a graph compiled without dynamic shapes) sees a bounded set of shapes; the padding rows never
reach an answer. The queues then price every batch at its padded rows, as the planner sized it
(`planner.plan` with the same ``buckets``), and the runtime refuses instances that pad otherwise
than it prices.

**Answers.** `Runtime.submit` returns a ``concurrent.futures.Future`` that resolves to the
request's output row, or fails with `Rejected` and one of `REASONS`. Every request is answered
exactly once: bad input at once, a deadline that cannot be met even alone at once ("hopeless"),
a request that would cost itself or a queued request its deadline at once (admission control,
"overloaded", `BatchQueue.admits`), a request that lost its slack in the queue as soon as it has
("expired"), a batch whose module raised with that error for that batch only ("failed"), and,
when the runtime closes, what is pending is either served (``drain``) or rejected ("shutdown").
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import GraftError
from .batching import Latency, Turns
from .deployment import deploy
from .instances import Instance
from .metrics import Metrics
from .pace import Pace
from .planner import Partition, Plan
from .pricing import group_latency
from .profiles import Profile
from .requests import Request
from .routing import Router

REASONS = ("bad-input", "hopeless", "expired", "overloaded", "failed", "shutdown")
MAX_QUEUE = 1024  # requests waiting on one partition at most, whatever admission control says
MAX_WAIT_S = 60.0  # a worker re-polls at least this often (a far deadline must not overflow a timed wait)
OVERHEAD_S = 0.001
"""The runtime's own time per batch on top of the profile's, in seconds: waking the worker,
polling the queues and the interpreter's scheduling around them. The queues price every batch
this much dearer, plus `OVERHEAD_PER_REQUEST_S` per request, so that back-to-back batches do not
drift past the deadlines admission control promised."""
OVERHEAD_PER_REQUEST_S = 0.0002
"""The runtime's own time per request of a batch, in seconds: submitting, collating its row,
splitting its output, answering its future (100 to 175 us on the development CPU, serialised by
the interpreter: `benchmarks/bench_runtime.py`). Negligible beside a resnet50; the whole cost of
a tiny model's batch."""
LEAD_S = 0.005
"""How long before a waiting batch's latest start the worker starts it, in seconds
(`BatchQueue`'s ``lead_s``). The latest start is the last moment at which the batch, priced by
the profile, still ends by its head's deadline; a worker that wakes for it a little late (a timed
wait overshoots by a millisecond or more on a loaded host) or spends time of its own on the
batch (collating rows, answering futures) would otherwise miss that deadline, or find its
request expired. ``benchmarks/bench_runtime.py`` measures the dispatch part."""
LEAD_FRACTION = 0.25
"""A waiting batch also starts this fraction of its priced latency early (`BatchQueue`'s
``lead_fraction``): a batch runs slower than its price when the host's speed drifts (by 20% within
a minute on the development VM) or its neighbours load the memory system; the simulator's
batches take exactly their price. Admission control plans for batches that much slower too
(`BatchQueue.admits`), so a request is admitted only if it survives such a slowdown, at the cost
of up to a fifth of the goodput under overload; drops keep the price."""


class Rejected(GraftError):
    """A request the runtime did not serve; ``reason`` is one of `REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FragmentSpec:
    """A fragment type as clients see it: ``name`` (``"{model}.{cut}"``) takes one row of
    ``row_shape`` and ``dtype`` (a request's tensor is ``[1, *row_shape]``) and answers one row of
    ``output_row_shape`` and ``output_dtype``; a request without a deadline must be answered
    within ``slo_s`` seconds of its submission; non-finite inputs are refused when ``finite``."""

    index: int
    name: str
    row_shape: tuple[int, ...]
    dtype: torch.dtype
    output_row_shape: tuple[int, ...]
    output_dtype: torch.dtype
    slo_s: float
    finite: bool = True


@dataclass
class _Pending:
    """A request waiting on a partition, with what answering it needs."""

    request: Request
    rows: torch.Tensor
    future: Future
    spec: FragmentSpec
    submitted_s: float


class Runtime:
    """A plan served on one device; see the module docstring.

    ``instances[g]`` runs ``plan.groups[g]``; ``profile`` is what the plan was made on. The queues
    price batches on ``pricing``, by default ``profile.planning`` (its p99 latencies where it has
    them, as the planner sizes groups), ``overhead_s`` dearer (`OVERHEAD_S`); a waiting batch
    starts ``lead_s`` (`LEAD_S`) plus `LEAD_FRACTION` of its price before its latest start.
    ``slo_s`` maps fragment types to the budget (s) a request without a deadline gets (default:
    its group's planned budget, `planner.Group`); ``max_queue`` bounds the requests waiting on one
    partition. The plan's ``buckets`` say how the instances pad their rows ("Padded batching";
    None: they do not), and the queues price batches accordingly. Every instance is warmed up before the
    workers start (`_warm`), so that no request pays for a first run. Raises GraftError when the
    plan does not fit one device, an instance does not match its group, or an instance pads to
    other buckets than the plan's.
    """

    def __init__(self, plan: Plan, profile: Profile, instances: Sequence[Instance], *, model: str | None = None,
                 device: str | torch.device = "cpu", slo_s: Mapping[int, float] | None = None,
                 pricing: Profile | None = None, max_queue: int = MAX_QUEUE, overhead_s: float = OVERHEAD_S,
                 lead_s: float = LEAD_S,
                 clock: Callable[[], float] = time.monotonic):
        if len(instances) != len(plan.groups) or any(
                tuple(i.fragments) != tuple(g.fragments) for i, g in zip(instances, plan.groups)):
            raise GraftError(f"instances for groups {[tuple(i.fragments) for i in instances]}: expected one per "
                             f"group of the plan, {[tuple(g.fragments) for g in plan.groups]}")
        self.buckets = plan.buckets
        _check_padding(instances, self.buckets)
        gpus = deploy(plan, profile).gpus
        if gpus > 1:
            raise GraftError(f"the plan's partitions (total share {plan.total_share:.2f}) need {gpus} devices; a "
                             "Runtime drives one: plan for less load, or run one Runtime per device")
        self.plan, self.profile, self.instances = plan, profile, tuple(instances)
        self.model = model or profile.model
        self.device = torch.device(device)
        self.clock = clock
        self.threads = torch.get_num_threads()  # the intra-op threads the CPU partitions divide
        self.fragments = tuple(self._spec(g, f, slo_s) for g, group in enumerate(plan.groups)
                               for f in group.fragments)
        self._by_name = {s.name: s for s in self.fragments} | {s.index: s for s in self.fragments}
        self.metrics = Metrics([s.name for s in self.fragments], [_group_name(g) for g in range(len(plan.groups))])
        self._router = Router(plan)
        self._ids = itertools.count()
        self._lock = threading.Lock()  # routing, ids and closing
        self._closing = False
        self._warm()
        if not (lead_s >= 0 and overhead_s >= 0):
            raise GraftError(f"lead_s {lead_s}, overhead_s {overhead_s}: expected seconds, at least 0")
        self.lead_s, self.overhead_s = lead_s, overhead_s
        self._partitions = [_Worker(self, p, part, pricing or profile.planning, max_queue)
                            for p, part in enumerate(plan.partitions)]
        for w in self._partitions:
            w.thread.start()

    @classmethod
    def from_model(cls, model: torch.nn.Module, example: Any, profile: Profile, plan: Plan, *,
                   device: str | torch.device = "cpu", verify: bool = True, **options: Any) -> Runtime:
        """Cut ``model`` (``example``: an input batch) at the profile's fragments, realign each
        group's tails (`instances.build`, checked against the model when ``verify``) and serve
        them, padded to the plan's buckets; ``options`` go to `Runtime`."""
        from .instances import build

        instances = build(model, example, profile, plan, device=device, verify=verify)
        return cls(plan, profile, instances, device=device, **options)

    def _spec(self, g: int, f: int, slo_s: Mapping[int, float] | None) -> FragmentSpec:
        instance = self.instances[g]
        spec = instance.input_spec(f)
        out_shape, out_dtype = instance.output_spec(f)
        budget = (slo_s or {}).get(f, self.plan.groups[g].budget_s)
        if not budget > 0:
            raise GraftError(f"slo_s[{f}] = {budget}: expected a positive number of seconds")
        return FragmentSpec(f, f"{self.model}.{self.profile.fragments[f]}", tuple(spec.row_shape), spec.dtype,
                            tuple(out_shape), out_dtype, float(budget), spec.dtype.is_floating_point)

    def _warm(self) -> None:
        """Run every member of every instance alone at every batch size up to the profile's
        largest, then all members together: kernels pick and cache their algorithms per shape
        on first use (oneDNN primitives, cuDNN plans), which can double a batch's time, and every
        shape a batch can give a layer arises here, not on a request's clock."""
        largest = int(self.profile.batches[-1])
        for instance in self.instances:
            members = list(instance.fragments)
            rows = {f: torch.zeros((1, *instance.input_spec(f).row_shape), dtype=instance.input_spec(f).dtype,
                                   device=self.device) for f in members}
            for n in range(1, largest + 1):
                for f in members:
                    instance.run([f] * n, [rows[f]] * n)
            if len(members) > 1:
                instance.run(members, [rows[f] for f in members])

    @property
    def ready(self) -> bool:
        """Whether the runtime takes requests: not closing, and every partition's worker alive."""
        return not self._closing and all(w.thread.is_alive() for w in self._partitions)

    def pace(self) -> list[dict]:
        """Per partition, in plan order: its pace now (``factor``) and how its batches' measured
        times compared with their prices at pace 1 (`pace.Pace.summary`: ``batches``, ``p50``,
        ``p90``, ``max`` of the ratios)."""
        out = []
        for w in self._partitions:
            with w.cond:
                out.append({"factor": w.pace.factor} | w.pace.summary())
        return out

    def spec(self, fragment: int | str) -> FragmentSpec:
        """The fragment type by index or protocol name; GraftError naming the known ones if none."""
        spec = self._by_name.get(fragment)
        if spec is None:
            raise GraftError(f"unknown fragment {fragment!r}: this runtime serves "
                             f"{', '.join(s.name for s in self.fragments)} (indices "
                             f"{', '.join(str(s.index) for s in self.fragments)})")
        return spec

    def submit(self, fragment: int | str, rows: torch.Tensor, deadline_s: float | None = None) -> Future:
        """Queue one request: ``rows`` is ``[1, *row_shape]`` of the fragment type's dtype, to be
        answered by ``deadline_s`` on `clock` (None: ``slo_s`` from now). Returns a Future of the
        output row ``[1, *output_row_shape]``, or failing with `Rejected`; never raises itself.
        ``rows`` must not change until the future is done."""
        future: Future = Future()
        now = self.clock()
        try:
            spec = self.spec(fragment)
        except GraftError as e:
            _settle(future, Rejected("bad-input", str(e)))
            return future
        self.metrics.submitted(spec.name)
        problem = _problem(spec, rows)
        deadline = now + spec.slo_s if deadline_s is None else deadline_s
        if problem is None and not (isinstance(deadline, (int, float)) and math.isfinite(deadline)):
            problem = f"deadline_s {deadline_s!r}: expected a finite time on the runtime's clock"
        if problem is not None:
            return self._reject(future, spec, "bad-input", f"{spec.name}: {problem}")
        with self._lock:
            if self._closing:
                return self._reject(future, spec, "shutdown", f"{spec.name}: the runtime is shutting down")
            g, p = self._router.route(spec.index)
            request = Request(float(deadline), now, next(self._ids), spec.index)
        rows = rows.to(self.device) if rows.device != self.device else rows
        self._partitions[p].offer(self.plan.partitions[p].groups.index(g), _Pending(request, rows, future, spec, now))
        return future

    def close(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop taking requests; serve what is pending (``drain``: each is answered or expires) or
        reject it ("shutdown"), and wait up to ``timeout_s`` for the workers to finish."""
        with self._lock:
            self._closing = True
        for w in self._partitions:
            w.close(drain)
        for w in self._partitions:
            w.thread.join(timeout_s)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _reject(self, future: Future, spec: FragmentSpec, reason: str, message: str) -> Future:
        self.metrics.rejected(spec.name, reason)
        _settle(future, Rejected(reason, message))
        return future

    def _answer(self, pending: _Pending, output: torch.Tensor) -> None:
        now = self.clock()
        self.metrics.answered(pending.spec.name, now - pending.submitted_s, now <= pending.request.deadline_s)
        _settle(pending.future, output)


class _Worker:
    """One partition: the queues of its groups (`Turns`) and the thread that runs their batches."""

    def __init__(self, runtime: Runtime, index: int, partition: Partition, pricing: Profile, max_queue: int):
        self.runtime, self.index, self.partition, self.max_queue = runtime, index, partition, max_queue
        plan = runtime.plan
        self.prices = [_padded(group_latency(pricing, plan.groups[g].fragments, partition.share, runtime.buckets),
                               runtime.overhead_s)
                       for g in partition.groups]  # per group: a batch's price at pace 1
        self.pace = Pace()
        self.turns = Turns([self._paced(price) for price in self.prices], pricing.max_batch, runtime.lead_s,
                           LEAD_FRACTION)
        self.pending: dict[int, _Pending] = {}
        self.cond = threading.Condition()
        self.busy_until = -math.inf  # when the running batch ends as priced; the last batch's true end when idle
        self.closing, self.drain = False, True
        runtime.metrics.watch_queue(f"partition{index}", lambda: len(self.pending))
        runtime.metrics.watch_pace(f"partition{index}", lambda: self.pace.factor)
        self.thread = threading.Thread(target=self._loop, name=f"graft-partition-{index}", daemon=True)

    def _paced(self, price: Latency) -> Latency:
        return lambda batch: self.pace.factor * price(batch)

    def offer(self, k: int, pending: _Pending) -> None:
        """Queue ``pending`` on group ``k``'s queue, or reject it at once (see the module docstring)."""
        r, runtime = pending.request, self.runtime
        with self.cond:
            queue = self.turns.queues[k]
            now = runtime.clock()
            alone = queue.latency((r,))
            if self.closing:
                verdict = "shutdown", "the runtime is shutting down"
            elif now > r.deadline_s - alone:
                verdict = "hopeless", (f"a budget of {(r.deadline_s - now) * 1e3:.1f} ms is below the "
                                       f"{alone * 1e3:.1f} ms this request takes alone")
            elif len(self.pending) >= self.max_queue or not self.turns.admits(k, r, max(now, self.busy_until)):
                verdict = "overloaded", (f"{len(self.pending)} requests wait on its partition, and it cannot "
                                         f"be answered within {(r.deadline_s - now) * 1e3:.1f} ms without "
                                         "a deadline lost; retry later")
            else:
                self.turns.arrive(k, r, now)
                self.pending[r.id] = pending
                self.cond.notify()
                return
        runtime._reject(pending.future, pending.spec, verdict[0], f"{pending.spec.name}: {verdict[1]}")

    def close(self, drain: bool) -> None:
        with self.cond:
            self.closing, self.drain = True, drain
            self.cond.notify()

    def _loop(self) -> None:
        try:
            with self._placement() as synchronize:
                while (batch := self._next()) is not None:
                    self._execute(*batch, synchronize)
        except BaseException as e:  # a bug here must not leave a request unanswered
            with self.cond:
                self.closing, orphans = True, list(self.pending.values())
                self.pending.clear()
            for p in orphans:
                self.runtime._reject(p.future, p.spec, "failed", f"{p.spec.name}: the partition's worker died: {e!r}")
            raise

    def _next(self) -> tuple[int, list[_Pending]] | None:
        """Wait for the next batch to run: (the queue that starts it, its requests), answering drops
        on the way; None once closing and nothing is left to serve."""
        runtime = self.runtime
        while True:
            rejected: list[tuple[_Pending, str, str]] = []
            batch, finished = None, False
            with self.cond:
                now = runtime.clock()
                started, decisions = (None, []) if self.closing and not self.drain else self.turns.poll(
                    now, self.busy_until)
                for d in decisions:
                    for drop in d.dropped:
                        rejected.append((self.pending.pop(drop.request.id), drop.reason, _WHY[drop.reason]))
                if started is not None:
                    self.busy_until = self.turns.busy_until(started)
                    batch = started, [self.pending.pop(r.id) for r in decisions[started].start]
                elif self.closing and (not self.drain or not self.pending):
                    rejected += [(p, "shutdown", _WHY["shutdown"]) for p in self.pending.values()]
                    self.pending.clear()
                    finished = True
                elif not rejected:
                    wake = self.turns.next_wakeup(now)
                    self.cond.wait(None if wake is None else min(max(wake - now, 0.0), MAX_WAIT_S))
            for p, reason, why in rejected:
                runtime._reject(p.future, p.spec, reason, f"{p.spec.name}: {why}")
            if batch is not None or finished:
                return batch

    def _execute(self, k: int, batch: list[_Pending], synchronize: Callable[[], None]) -> None:
        runtime = self.runtime
        g = self.partition.groups[k]
        priced = self.prices[k]([p.request for p in batch])
        start = runtime.clock()
        ran = False
        try:
            outputs = runtime.instances[g].run([p.request.fragment for p in batch], [p.rows for p in batch])
            synchronize()
        except Exception as e:  # noqa: BLE001 - the batch's requests fail; the partition keeps serving
            for p in batch:
                runtime._reject(p.future, p.spec, "failed", f"{p.spec.name}: group {g}'s batch of {len(batch)} "
                                                            f"failed: {type(e).__name__}: {e}")
        else:
            if len(outputs) != len(batch):  # an instance that broke its contract: nobody is left waiting
                for p in batch:
                    runtime._reject(p.future, p.spec, "failed", f"{p.spec.name}: group {g}'s instance answered "
                                                                f"{len(outputs)} rows for a batch of {len(batch)}")
                return
            ran = True
            for p, out in zip(batch, outputs):
                runtime._answer(p, out)
        finally:
            end = runtime.clock()
            with self.cond:
                self.busy_until = end
                if ran and self.pace.observe(end - start, priced):
                    self.turns.reprice()
            runtime.metrics.batch(_group_name(g), len(batch), end - start)

    @contextlib.contextmanager
    def _placement(self) -> Iterator[Callable[[], None]]:
        """Run this thread on the partition's share (see "Placement"); yields the call that waits
        for a batch's work to finish."""
        device, share = self.runtime.device, self.partition.share
        if device.type != "cuda":
            torch.set_num_threads(max(1, round(share * self.runtime.threads)))
            with torch.inference_mode():
                yield lambda: None
            return
        torch.cuda.set_device(device)
        stream = _green_stream(device, share) or torch.cuda.Stream(device)
        with torch.inference_mode(), torch.cuda.stream(stream):
            yield stream.synchronize


_WHY = {"expired": "it could no longer meet its deadline after waiting in the queue",
        "hopeless": "its deadline cannot be met even alone",
        "shutdown": "the runtime shut down before serving it"}


def _green_stream(device: torch.device, share: float) -> torch.cuda.Stream | None:
    """A stream of a green context of ``share`` of ``device``'s SMs; None for the whole device or
    where green contexts cannot be made (warned)."""
    if share >= 1:
        return None
    sms = max(1, round(share * torch.cuda.get_device_properties(device).multi_processor_count))
    try:
        from torch.cuda.green_contexts import GreenContext

        return GreenContext(num_sms=sms, device_id=device.index or 0).Stream()
    except Exception as e:  # noqa: BLE001 - older PyTorch or CUDA: fall back, and say so
        warnings.warn(f"no green context of {sms} SMs on {device} ({type(e).__name__}: {e}); the partition "
                      "runs on a plain stream with every SM, so its latency may exceed the profile's under load",
                      RuntimeWarning, stacklevel=2)
        return None


def _check_padding(instances: Sequence[Instance], buckets: tuple[int, ...] | None) -> None:
    """Raise GraftError unless every instance pads its rows to ``buckets`` (`Instance.buckets`;
    an instance without the attribute does not pad): the queues price batches padded to
    ``buckets``, and an instance that pads otherwise runs batches at other prices than planned."""
    wrong = [(g, pads) for g, i in enumerate(instances) if (pads := getattr(i, "buckets", None)) != buckets]
    if wrong:
        said = "; ".join(f"group {g} pads to {None if pads is None else list(pads)}" for g, pads in wrong)
        raise GraftError(f"the runtime prices batches padded to buckets={None if buckets is None else list(buckets)}, "
                         f"but {said}; expected instances built with the same buckets (instances.build(..., "
                         "buckets=...), or Runtime.from_model(..., buckets=...))")


def _padded(latency: Latency, overhead_s: float) -> Latency:
    """``latency`` with the runtime's own cost added: ``overhead_s`` per batch and
    `OVERHEAD_PER_REQUEST_S` per request."""
    return lambda batch: latency(batch) + overhead_s + OVERHEAD_PER_REQUEST_S * len(batch)


def _problem(spec: FragmentSpec, rows: Any) -> str | None:
    """What is wrong with a request's tensor for ``spec``, or None; never raises."""
    try:
        return _check(spec, rows)
    except Exception as e:  # noqa: BLE001 - a tensor no check can read (meta, sparse, ...) is bad input
        return f"cannot read the tensor ({type(e).__name__}: {e}); expected a dense tensor of real values"


def _check(spec: FragmentSpec, rows: Any) -> str | None:
    want = (1, *spec.row_shape)
    if not isinstance(rows, torch.Tensor):
        return f"expected a tensor of shape {list(want)}, got {type(rows).__name__}"
    if tuple(rows.shape) != want:
        return f"got shape {list(rows.shape)}, expected {list(want)} (one row)"
    if rows.dtype != spec.dtype:
        return f"got dtype {rows.dtype}, expected {spec.dtype}"
    if rows.layout != torch.strided or rows.device.type == "meta":
        return f"got a {rows.layout} tensor on {rows.device}, expected a dense tensor with values"
    return nonfinite(rows) if spec.finite else None


def nonfinite(rows: torch.Tensor) -> str | None:
    """What is non-finite in ``rows`` (how many NaN or infinite values, and the index of the
    first), or None when every value is finite (integer tensors always are).

    On a CPU the test runs in numpy, on the calling thread alone: a torch reduction would fork
    the caller's intra-op threads for every request, which on a small host costs milliseconds
    per call (an OpenMP wake-up) and competes with the partitions' own threads.
    """
    if not rows.is_floating_point():
        return None
    if rows.device.type == "cpu" and rows.dtype != torch.bfloat16:
        values = rows.detach().numpy()
        if np.isfinite(values).all():
            return None
        bad = ~np.isfinite(values)
    else:
        bad_t = ~torch.isfinite(rows)
        if not bool(bad_t.any()):
            return None
        bad = bad_t.cpu().numpy()
    first = [int(i) for i in np.argwhere(bad)[0]]
    n = int(bad.sum())
    return f"got {n} non-finite value{'s' * (n > 1)} (NaN or infinity), the first at index {first}; expected finite values"


def _settle(future: Future, outcome: Any) -> None:
    """Resolve ``future`` with an output or a `Rejected`, once; a future its client cancelled
    stays cancelled."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


def _group_name(g: int) -> str:
    return f"group{g}"
