"""Which values of a graph carry batch rows: shape propagation at two batch sizes.

Re-alignment concatenates the rows of several fragments, so it must know, for every value in a
fragment's graph, how it depends on the batch size. We run the graph twice on the ``meta``
device (shapes only, no data, no compute), once with batch 2 and once with batch 3, and compare:

* a tensor whose dim 0 is 2, then 3, and whose other dims agree, carries ROWS;
* a tensor with the same shape in both runs is CONST when no input reaches it, OTHER otherwise
  (a reduction over the batch, say);
* a non-tensor value (a size, a dim count, a shape tuple) that agrees in both runs is a SCALAR
  literal; an int that is 2, then 3, is the batch size itself and becomes the BATCH marker inside
  the SCALAR's value; anything else that moves with the batch is OTHER.

Two sizes suffice because the batch is the only thing that changes between the runs: a value
equal to the batch in both runs is the batch (or a coincidence no model relies on), and a reshape
that hard-codes the batch size shows up as a wrong shape in one of them. Whether an op may be
*shared* is a separate question, answered by the rule table in ``separable.py``; this module only
records facts. The batch-3 run also counts FLOPs per node (``torch.utils.flop_counter``).
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .errors import GraftError

PROBE_BATCHES = (2, 3)


class _BatchMarker:
    """The batch size inside a SCALAR value, e.g. ``(BATCH, 768)`` for ``x.shape``."""

    def __repr__(self) -> str:
        return "BATCH"


BATCH = _BatchMarker()


class Kind(enum.Enum):
    ROWS = "rows"
    CONST = "const"
    SCALAR = "scalar"
    OTHER = "other"


@dataclass(frozen=True)
class Facts:
    """What the two runs tell about one node's value.

    ``value`` is the meta value at batch 2 (for ranks and shapes); ``row_shape`` the shape of one
    row of a ROWS tensor; ``scalar`` the value of a SCALAR, with BATCH where the batch size stands.
    """

    kind: Kind
    value: Any
    depends_on_input: bool
    row_shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    scalar: Any = None
    flops_per_row: int = 0
    bytes_per_row: int = 0

    @property
    def is_tensor(self) -> bool:
        return isinstance(self.value, torch.Tensor)


@dataclass(frozen=True)
class InputSpec:
    """One fragment input: a tensor with a free batch dim 0 and this shape for each row."""

    row_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device | None = None

    def describe(self) -> str:
        return "(*, " + ", ".join(map(str, self.row_shape)) + ")" if self.row_shape else "(*,)"


class MetaCache:
    """Meta-device stand-ins for weights, and memoized module calls, shared within one call.

    Fragments cut from one model share their module objects, so each weight is converted once,
    and a module called on the same input shapes by several fragments runs once per batch size.
    The originals are kept alive so that ``id()`` keys are never reused.
    """

    def __init__(self) -> None:
        self._tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._states: dict[int, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}
        self.calls: dict[Any, tuple[Any, int]] = {}

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        hit = self._tensors.get(id(t))
        if hit is None:
            hit = self._tensors[id(t)] = (t, t.detach().to("meta"))
        return hit[1]

    def state(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        hit = self._states.get(id(module))
        if hit is None:
            named = [*module.named_parameters(), *module.named_buffers()]
            hit = self._states[id(module)] = (module, {k: self.tensor(v) for k, v in named})
        return hit[1]

    def call_key(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        leaves = pytree.tree_leaves((args, kwargs))
        shapes = tuple((tuple(x.shape), x.dtype, x.stride()) if isinstance(x, torch.Tensor) else repr(x) for x in leaves)
        return (id(module), module.training, shapes)


class _MetaRun(fx.Interpreter):
    """Runs a graph on meta tensors, recording each node's value and, with a counter, its FLOPs."""

    def __init__(self, gm: fx.GraphModule, cache: MetaCache, counter: FlopCounterMode | None):
        super().__init__(gm, garbage_collect_values=False)
        self.cache = cache
        self.counter = counter
        self.flops: dict[fx.Node, int] = {}
        self.node: fx.Node | None = None
        self.remembered_flops = 0

    def total_flops(self) -> int:
        return self.counter.get_total_flops() if self.counter else 0

    def run_node(self, n: fx.Node) -> Any:
        self.node, self.remembered_flops = n, 0
        before = self.total_flops()
        result = super().run_node(n)
        self.flops[n] = self.total_flops() - before + self.remembered_flops
        return result

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return self.cache.tensor(value) if isinstance(value, torch.Tensor) else value

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        key = (self.counter is not None, self.cache.call_key(module, args, kwargs))
        if key in self.cache.calls:
            result, self.remembered_flops = self.cache.calls[key]
            return result
        before = self.total_flops()
        result = functional_call(module, self.cache.state(module), args, kwargs)
        self.cache.calls[key] = (result, self.total_flops() - before)
        return result


def _run(gm: fx.GraphModule, specs: list[InputSpec], batch: int, cache: MetaCache, name: str, count: bool):
    inputs = [torch.empty((batch, *s.row_shape), dtype=s.dtype, device="meta") for s in specs]
    with FlopCounterMode(display=False) if count else contextlib.nullcontext() as counter:
        run = _MetaRun(gm, cache, counter)
        try:
            run.run(*inputs, enable_io_processing=False)
        except Exception as e:  # noqa: BLE001 - re-raised with the failing node named
            node = run.node
            where = f"node {node.name!r} ({node.op} {_target_name(node)})" if node else "the graph"
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GraftError(
                f"{name}: {where} failed during shape propagation with batch size {batch}: "
                f"{first_line}. "
                "graft_fx serves fragments at any batch size; a fragment must not hard-code its "
                "batch size (export it with a dynamic batch dim, e.g. "
                "dynamic_shapes={'x': {0: torch.export.Dim('batch')}})"
            ) from e
    return run.env, run.flops


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


class _NotSymbolic(Exception):
    pass


def _symbolic(a: Any, b: Any) -> Any:
    """The SCALAR value of a non-tensor seen as ``a`` at batch 2 and ``b`` at batch 3."""
    if isinstance(a, bool) or isinstance(b, bool):
        if type(a) is type(b) and a == b:
            return a
        raise _NotSymbolic
    if isinstance(a, int) and isinstance(b, int):
        if a == b:
            return a
        if (a, b) == PROBE_BATCHES:
            return BATCH
        raise _NotSymbolic
    if isinstance(a, (tuple, list)) and type(a) is type(b) and len(a) == len(b):
        parts = [_symbolic(x, y) for x, y in zip(a, b)]
        return tuple(parts) if isinstance(a, tuple) else parts
    if isinstance(a, (torch.Tensor, torch.nn.Module)) or isinstance(b, torch.Tensor):
        raise _NotSymbolic
    try:
        if type(a) is type(b) and a == b:
            return a
    except Exception:  # noqa: BLE001 - incomparable objects are simply not literals
        pass
    raise _NotSymbolic


def _leaves(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (tuple, list)) else [v]


def _describe(a: Any, b: Any, depends: bool, flops: int) -> Facts:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape == b.shape:
            kind = Kind.OTHER if depends else Kind.CONST
            return Facts(kind, a, depends, dtype=a.dtype, flops_per_row=flops)
        if a.dim() == b.dim() >= 1 and (a.shape[0], b.shape[0]) == PROBE_BATCHES and a.shape[1:] == b.shape[1:]:
            per_row = b.numel() - a.numel()
            return Facts(Kind.ROWS, a, depends, row_shape=tuple(a.shape[1:]), dtype=a.dtype,
                         flops_per_row=flops, bytes_per_row=per_row * a.element_size())
        return Facts(Kind.OTHER, a, depends, dtype=a.dtype, flops_per_row=flops)
    if isinstance(a, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in a):
        if type(a) is type(b) and len(a) == len(b):
            parts = [_describe(x, y, depends, 0) for x, y in zip(a, b)]
            if all(p.kind in (Kind.ROWS, Kind.SCALAR) and (p.kind is Kind.ROWS or p.scalar is None) for p in parts):
                if any(p.kind is Kind.ROWS for p in parts):
                    return Facts(Kind.ROWS, a, depends, flops_per_row=flops,
                                 bytes_per_row=sum(p.bytes_per_row for p in parts))
            if not depends and all(p.kind is Kind.CONST for p in parts):
                return Facts(Kind.CONST, a, depends, flops_per_row=flops)
        return Facts(Kind.OTHER, a, depends, flops_per_row=flops)
    try:
        return Facts(Kind.SCALAR, a, depends, scalar=_symbolic(a, b), flops_per_row=flops)
    except _NotSymbolic:
        return Facts(Kind.OTHER, a, depends, flops_per_row=flops)


def propagate(gm: fx.GraphModule, specs: list[InputSpec], cache: MetaCache, name: str) -> dict[fx.Node, Facts]:
    """Facts for every node of ``gm`` but the output.

    FLOPs are counted in the batch-3 run only (counting is the slow part: it decomposes ops
    without a FLOP formula); per-row FLOPs are a third of that for values that carry rows.
    """
    small, large = PROBE_BATCHES
    env2, _ = _run(gm, specs, small, cache, name, count=False)
    env3, flops3 = _run(gm, specs, large, cache, name, count=True)
    facts: dict[fx.Node, Facts] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        depends = node.op == "placeholder" or any(facts[a].depends_on_input for a in node.all_input_nodes)
        per_row = flops3.get(node, 0) // large if depends else 0
        facts[node] = _describe(env2[node], env3[node], depends, per_row)
    return facts
