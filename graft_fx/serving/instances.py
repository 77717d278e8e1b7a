"""Planned groups as running modules: the one place where a `Plan` and the model's graph meet.

The planner (`graft_fx.serving.planner`) works on a latency `Profile`, where fragment type ``f``
is only a name: the cut its server-side tail starts at (``profile.fragments[f]``, a node name as
`graft_fx.cut_points` gives it). `build` turns each planned `Group` into an `Instance`: it cuts
the model once at every cut the plan uses (`graft_fx.cuts.tails`: one capture and analysis of
the model however many fragment types there are), realigns each group's tails into one
`RealignedModule` (`graft_fx.realign`, checked against the tails run eagerly unless
``verify=False``, padding each member's rows up to the next of the plan's ``buckets``), and puts
it in eval mode on the serving device.

`Instance.run` is the serving hot path: one batch of requests, each one row of one member's
input, possibly of several members in any order. It concatenates each member's rows, runs the
realigned graph once, and hands every request its own output row back. Per request it does one
dict lookup, one list append and one ``next`` on an iterator of output rows; everything else is
per member (a ``torch.cat`` of its rows, on the calling thread alone, and a ``split`` of its
outputs into views) or per batch.

Concurrency: several worker threads may call `run` on one instance at once. The realigned module
runs a graph built for the set of members present in a call, built on first use and cached in a
dict. A group of at most `PREBUILT_MEMBERS` members has all ``2**k - 1`` of its graphs built by
`build` (at most 15), so `run` never builds one and takes no lock; a larger group builds each
graph on first use under the instance's lock (the first batch of a new mix of members then pays
for one graph build, milliseconds to tens of them, before it runs).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import numbers
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .. import cuts
from ..capture import InputSpec
from ..errors import GraftError
from ..realign import RealignedModule, realign
from .planner import Plan
from .profiles import Profile

PREBUILT_MEMBERS = 4
"""Groups of up to this many members have a graph for every subset of members built up front."""


@dataclass(eq=False)
class Instance:
    """One planned group as a running module.

    ``fragments`` are the group's profile fragment indices, ascending; ``names`` their cut names
    (``profile.fragments[f]``); ``module`` realigns the members' tails in ``fragments`` order
    (its input ``i`` is member ``fragments[i]``'s). Built by `build`; see the module docstring
    for how it runs and why it is safe to call from several threads.
    """

    fragments: tuple[int, ...]
    names: tuple[str, ...]
    module: RealignedModule
    _slot: dict[int, int] = field(init=False, repr=False)
    _outputs: tuple[tuple[tuple[int, ...], torch.dtype], ...] = field(init=False, repr=False)
    _lock: threading.Lock | None = field(init=False, repr=False, default=None)
    _ready: set[frozenset[int]] = field(init=False, repr=False, default_factory=set)

    def __post_init__(self):
        self.fragments, self.names = tuple(self.fragments), tuple(self.names)
        k = len(self.fragments)
        if list(self.fragments) != sorted(set(self.fragments)) or len(self.names) != k \
                or self.module.num_fragments != k or k == 0:
            raise GraftError(f"Instance: fragments {self.fragments} (expected distinct and ascending), names "
                             f"{self.names} and a module of {self.module.num_fragments} fragments must agree")
        self._slot = {f: m for m, f in enumerate(self.fragments)}
        self._outputs = tuple(_output_spec(self.module, m, name) for m, name in enumerate(self.names))
        if k <= PREBUILT_MEMBERS:
            for n in range(1, k + 1):
                for present in itertools.combinations(range(k), n):
                    self.module.graph_for(frozenset(present))
        else:
            self._lock = threading.Lock()

    @property
    def buckets(self) -> tuple[int, ...] | None:
        """The batch sizes the module pads each member's rows up to (`graft_fx.buckets`); None
        when it runs them as they are."""
        return self.module.buckets

    def input_spec(self, fragment: int) -> InputSpec:
        """One row of ``fragment``'s input: ``row_shape`` (without the batch dim) and ``dtype``;
        a request's row is a tensor of shape ``[1, *row_shape]`` of that dtype, on the instance's
        device. GraftError if ``fragment`` is not a member."""
        return self.module.input_specs[self._member(fragment)][0]

    def output_spec(self, fragment: int) -> tuple[tuple[int, ...], torch.dtype]:
        """One row of ``fragment``'s output: its shape without the batch dim, and its dtype.
        GraftError if ``fragment`` is not a member."""
        return self._outputs[self._member(fragment)]

    def run(self, fragments: Sequence[int], rows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run one batch: request ``i`` is ``rows[i]``, one row ``[1, *row_shape]`` of member
        ``fragments[i]``'s input (members mixed in any order; a member may be absent).

        Returns each request's output row, ``[1, *out]`` as `output_spec` says, in request order.
        The rows are views into the batch's output tensors (no copy). The realigned module runs
        once, under ``torch.inference_mode()``, on each present member's rows concatenated in
        request order. Raises GraftError for a fragment that is not a member, a row that is not
        one row of the member's input (shape, dtype or device), or ``len(fragments) !=
        len(rows)``.
        """
        if len(fragments) != len(rows):
            raise GraftError(f"run: {len(fragments)} fragments but {len(rows)} rows; expected one fragment per row")
        try:
            slots = [self._slot[f] for f in fragments]
        except KeyError as e:
            raise self._not_member(e.args[0]) from None
        per_member: list[list[torch.Tensor]] = [[] for _ in self.fragments]
        for s, r in zip(slots, rows):
            per_member[s].append(r)
        if self._lock is not None:
            self._ensure(frozenset(m for m, b in enumerate(per_member) if b))
        with torch.inference_mode():
            with _one_thread():
                inputs = [torch.cat(b) if b else None for b in per_member]
            for m, (x, b) in enumerate(zip(inputs, per_member)):
                if x is not None and x.shape[0] != len(b):
                    row = ", ".join(map(str, self.input_spec(self.fragments[m]).row_shape))
                    raise GraftError(f"run: {len(b)} requests of fragment {self.fragments[m]} ({self.names[m]}) "
                                     f"hold {x.shape[0]} rows; expected one row [1, {row}] per request")
            outputs = self.module(*inputs)
            split = [None if x is None else iter(y.split(1)) for x, y in zip(inputs, outputs)]
        return [next(split[s]) for s in slots]

    def _ensure(self, present: frozenset[int]) -> None:
        """Build the graph for ``present`` once, even when several threads ask at once."""
        if present in self._ready:
            return
        with self._lock:
            if present not in self._ready:
                self.module.graph_for(present)
                self._ready.add(present)

    def _member(self, fragment: int) -> int:
        if fragment not in self._slot:
            raise self._not_member(fragment)
        return self._slot[fragment]

    def _not_member(self, fragment: Any) -> GraftError:
        return GraftError(f"fragment {fragment} is not served by this instance: it serves fragments "
                          f"{list(self.fragments)} ({', '.join(self.names)})")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run a block on the calling thread alone: collating rows is a memory copy, which a torch op
    would split across the thread's intra-op threads, and forking them costs more than the copy
    (milliseconds per op on a small host, where the copy takes a fraction of one)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _output_spec(module: RealignedModule, m: int, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """One row of member ``m``'s output, from the shape its capture recorded (no run needed)."""
    captured = module.analysis(m).captured
    leaves = captured.out_leaves
    value = leaves[0].meta.get("val") if len(leaves) == 1 and isinstance(leaves[0], fx.Node) else None
    if not captured.out_spec.is_leaf() or not isinstance(value, torch.Tensor) or value.dim() == 0:
        raise GraftError(f"the tail from cut {name!r} does not return one tensor with a batch dim; instances "
                         f"serve models whose output is one tensor of shape [batch, ...]")
    return tuple(int(d) for d in value.shape[1:]), value.dtype


def build(model: torch.nn.Module, example: Any, profile: Profile, plan: Plan, *,
          device: str | torch.device = "cpu", verify: bool = True) -> list[Instance]:
    """One `Instance` per group of ``plan`` (index-aligned with ``plan.groups``), serving ``model``.

    ``example`` is the model's input (a tensor or a tuple, batch dim 0 of any size) as
    `graft_fx.cut_points` takes it; ``profile`` names the fragment types (``profile.fragments``,
    cut names of this model); ``plan`` groups them. The model is cut once, at every fragment
    the plan uses (`graft_fx.cuts.tails`), and each group's tails, in ascending fragment order,
    are realigned with ``graft_fx.realign(tails, verify=verify)``: with ``verify`` every
    realigned module is checked against its tails run eagerly (seconds for a large model).
    The plan's ``buckets`` go to ``realign``: each module pads every present member's rows up to
    the next bucket (`graft_fx.buckets`), so that a static-shape executor sees a bounded set of
    shapes, as the plan priced them; a runtime over such instances prices batches at the padded
    rows too (`runtime.Runtime`).

    The model is left as it was: where it is not all in eval mode or not all on ``device``, the
    instances are cut from a copy put in eval mode on ``device``; otherwise they hold the model's
    own weights (no copy). Raises GraftError for a plan that uses a fragment index the profile
    lacks, a group with no or repeated fragments, a profile fragment name that is not a cut point
    of the model (a profile of another model, or measured with another capture), tails that do
    not return one tensor, and what ``realign`` refuses (with buckets: a
    fragment whose rows are not independent, which padding would change).
    """
    names = profile.fragments
    for g, group in enumerate(plan.groups):
        members = tuple(group.fragments)
        lacking = [f for f in members if not (isinstance(f, numbers.Integral) and 0 <= f < len(names))]
        if lacking:
            raise GraftError(f"plan group {g} serves fragments {lacking}, which the profile of {profile.model!r} "
                             f"lacks: it has fragments 0..{len(names) - 1} ({', '.join(names)})")
        if not members or len(set(members)) != len(members):
            raise GraftError(f"plan group {g} serves fragments {list(members)}: expected one or more distinct "
                             f"fragment indices")
    groups = [tuple(sorted(int(f) for f in group.fragments)) for group in plan.groups]
    used = sorted({f for members in groups for f in members})
    model, example = _placed(model, example, torch.device(device))
    try:
        tails = dict(zip(used, cuts.tails(model, [names[f] for f in used], example)))
    except GraftError as e:
        if "is not a cut point" not in str(e):
            raise
        valid = {c.name for c in cuts.cut_points(model, example)}
        wrong = [f"{f} ({names[f]!r})" for f in used if names[f] not in valid]
        raise GraftError(f"the profile of {profile.model!r} ({profile.device}) names fragments that are not cut "
                         f"points of this model ({type(model).__name__}): {', '.join(wrong)}; was it measured on "
                         f"another model or another torch version? {e}") from None
    instances = []
    for members in groups:
        module = realign([tails[f] for f in members], verify=verify, buckets=plan.buckets).eval()
        instances.append(Instance(members, tuple(names[f] for f in members), module))
    return instances


def _placed(model: torch.nn.Module, example: Any, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """``model`` in eval mode on ``device`` (a copy where it is not already), and ``example`` there."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    tensors = itertools.chain(model.parameters(), model.buffers())
    if any(m.training for m in model.modules()) or any(t.device != device for t in tensors):
        model = copy.deepcopy(model).to(device).eval()
    return model, pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, example)
