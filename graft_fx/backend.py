"""The ``graft`` torch.compile backend: realign the fragments one captured graph runs.

A serving loop that runs several fragments in one compiled function, ``return tail_a(xa),
tail_b(xb)``, hands Dynamo one graph holding all of them. The backend finds them there and
realigns them with the same passes as `graft_fx.realign`, so a user gets re-alignment from
``torch.compile(fn, backend="graft")`` without changing the code:

1. **Split the graph into fragments** (`fragments_of`). A placeholder is *data* (rows) when it
   is a tensor argument of the compiled function, a *size* when it is a SymInt, and else a
   *weight*: a module's parameter or buffer, or a tensor the function reads from a global, a
   closure or an attribute. Nodes are joined into components through the values they compute
   from data; weights, sizes and values computed from weights alone do not join anything (two
   tails of one model read the same weight placeholders). A component that reads data and
   produces graph outputs is a fragment. Every output must come from exactly one fragment;
   otherwise (``a(x) + b(y)``) the graph has no independent fragments. Nor has a graph with a
   side effect on weights alone (a call counter, a batch norm's ``num_batches_tracked``), which
   no fragment would carry, or with a data input that has no rows (0-dim) or whose batch size
   differs from the other inputs of its fragment (a broadcast ``[1, F]`` argument, a weight
   passed as an argument).
2. **Give each fragment its own GraphModule**: its data placeholders become its inputs, its
   weights become the module's own parameters and buffers (the very tensors the caller's
   modules hold, so in-place updates reach them), size placeholders become ``x.size(d)`` of
   the data input that carries that size.
3. **Realign** them on the first call (`graft_fx.realign`: each fragment is exported to ATen
   by torch.export, which is the seam the realignment passes work at, and by default verified
   against the fragment run eagerly), and compile the RealignedModule with the inner compiler
   (Inductor by default, ``options={"compiler": "aot_eager"}`` for debugging). Not while Dynamo
   compiles: see `_Realigned`.

A graph with fewer than two fragments goes to the inner compiler unchanged; so do fragments
that share no layer, or that realign refuses (a GraftError, reported as a RuntimeWarning), on
their first call. ``torch._dynamo.utils.counters["graft"]["realign"]`` counts the graphs
realigned.

Every call checks that the weights Dynamo passes are the tensors it realigned (a parameter
replaced by a new object is passed as a new input without a recompilation) and that none was
updated in place since (`RealignedModule.weights_updated`: weights equal at the alignment may
differ now), and realigns again if either happened.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree
from torch._dynamo.backends.registry import lookup_backend, register_backend
from torch._dynamo.backends import registry
from torch._dynamo.source import LocalSource, is_from_unspecialized_param_buffer_source
from torch._dynamo.utils import counters

from .errors import GraftError
from .keys import SHARES
from .lowering import KERNELS
from .realign import RealignedModule, realign

NAME = "graft"
COMPILERS = ("inductor", "aot_eager", "eager")
"""What compiles the realigned module (``options={"compiler": ...}``)."""


@dataclass(frozen=True)
class Fragment:
    """One independent fragment of a captured graph: ``gm`` takes ``data`` (positions in the
    captured graph's inputs) in order and returns a tuple of the values of ``outputs``
    (positions in the captured graph's output tuple). ``weights``: the positions of the
    captured graph's weight inputs it reads, with the tensors it was built with."""

    gm: fx.GraphModule
    data: tuple[int, ...]
    outputs: tuple[int, ...]
    weights: tuple[tuple[int, torch.Tensor], ...]


def _kind(node: fx.Node, example: Any) -> str:
    """``"weight"``, ``"size"`` or ``"data"`` for a placeholder (module docstring). Data is a
    tensor the compiled function takes as an argument; any other tensor (a module's parameter or
    buffer, a global, a closure's or an attribute's tensor) is a constant of the graph, a weight."""
    if not isinstance(example, torch.Tensor):
        return "size"
    source = getattr(node.meta.get("grapharg"), "source", None)
    if isinstance(example, nn.Parameter) or (source is not None and is_from_unspecialized_param_buffer_source(source)):
        return "weight"
    if source is not None and not (isinstance(source, LocalSource) and source.is_input):
        return "weight"
    return "data"


class _Components:
    """Union-find over nodes."""

    def __init__(self) -> None:
        self.parent: dict[fx.Node, fx.Node] = {}

    def find(self, n: fx.Node) -> fx.Node:
        self.parent.setdefault(n, n)
        while self.parent[n] is not n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def union(self, a: fx.Node, b: fx.Node) -> None:
        self.parent[self.find(a)] = self.find(b)


def fragments_of(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[Fragment]:
    """The independent fragments of a Dynamo-captured graph (module docstring, step 1-2), in
    order of their first output; an empty list when the graph is not made of independent
    fragments that each read data and produce outputs."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    kinds = {n: _kind(n, x) for n, x in zip(placeholders, example_inputs)}
    on_rows: set[fx.Node] = {n for n in placeholders if kinds[n] == "data"}  # computed from data
    parts = _Components()
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method", "call_module"):
            inputs = [a for a in n.all_input_nodes if a in on_rows]
            if inputs:
                on_rows.add(n)
                for a in inputs:
                    parts.union(n, a)
    if any(n.op.startswith("call_") and not n.users and n not in on_rows and n.all_input_nodes
           for n in gm.graph.nodes):
        return []  # a side effect on weights alone (a call counter): it belongs to no fragment
    output = next(n for n in gm.graph.nodes if n.op == "output")
    leaves = pytree.tree_leaves(output.args[0])
    if not all(isinstance(x, fx.Node) and x in on_rows and x.op != "placeholder" for x in leaves):
        return []  # an output computed from weights or sizes alone, a bare input, or a literal
    roots: dict[fx.Node, list[int]] = {}
    for i, leaf in enumerate(leaves):
        roots.setdefault(parts.find(leaf), []).append(i)
    if len(roots) < 2 or not isinstance(output.args[0], (tuple, list)) or len(output.args[0]) != len(leaves):
        return []
    data_of = {root: [p for p in placeholders if kinds[p] == "data" and parts.find(p) is root] for root in roots}
    if sum(map(len, data_of.values())) != sum(kinds[p] == "data" for p in placeholders):
        return []  # a data input no output depends on: its component is not a fragment
    position = {n: i for i, n in enumerate(placeholders)}
    if not all(_rows_of_one_batch([example_inputs[position[p]] for p in data]) for data in data_of.values()):
        return []
    fragments = []
    for root, outputs in roots.items():
        members = {n for n in on_rows if parts.find(n) is root}
        made = _extract(gm, members, data_of[root], [leaves[i] for i in outputs], kinds, example_inputs, position)
        if made is None:
            return []
        fragment_gm, weights = made
        fragments.append(Fragment(fragment_gm, tuple(position[p] for p in data_of[root]), tuple(outputs), weights))
    return fragments


def _rows_of_one_batch(data: list[torch.Tensor]) -> bool:
    """Whether a fragment's data inputs can be its batch: each has a dim 0 (a 0-dim tensor has
    no rows), of one size for all (not a broadcast ``[1, F]`` scale or a weight passed in). Other
    dims may be symbolic (``dynamic=True``, a sequence length): the realigned module takes the
    row shapes of the first call, and calls with others run the graph unchanged (`_Realigned`)."""
    return all(x.dim() >= 1 for x in data) and len({x.shape[0] for x in data}) == 1


def _extract(gm: fx.GraphModule, members: set[fx.Node], data: list[fx.Node], outputs: list[fx.Node],
             kinds: dict[fx.Node, str], example_inputs: Sequence[Any], position: dict[fx.Node, int]
             ) -> tuple[fx.GraphModule, tuple[tuple[int, torch.Tensor], ...]] | None:
    """One fragment's GraphModule: ``members`` (its nodes on rows) and the nodes on weights and
    sizes they read, copied in graph order; None if a size cannot be found on its data."""
    needed: set[fx.Node] = set()
    stack = list(members)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack += n.all_input_nodes
    root = nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for p in data:
        env[p] = graph.placeholder(p.name)
    weights = []
    for n in gm.graph.nodes:
        if n not in needed or n in env:
            continue
        if n.op == "placeholder" and kinds[n] == "weight":
            tensor = example_inputs[position[n]]
            name = f"w{len(weights)}"
            _attach(root, name, tensor)
            weights.append((position[n], tensor))
            env[n] = graph.get_attr(name)
        elif n.op == "placeholder":  # a size: the size of a data input's dim that carries it
            found = _size_of(n, data, env, graph)
            if found is None:
                return None
            env[n] = found
        elif n.op == "get_attr":
            setattr(root, _local(n), getattr(gm, n.target))
            env[n] = graph.get_attr(_local(n))
        elif n.op == "call_module":
            root.add_module(_local(n), gm.get_submodule(n.target))
            env[n] = graph.create_node("call_module", _local(n),
                                       *fx.node.map_arg((n.args, n.kwargs), env.__getitem__), name=n.name)
        else:
            env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(tuple(env[o] for o in outputs))
    return fx.GraphModule(root, graph), tuple(weights)


def _local(node: fx.Node) -> str:
    """The name a fragment's own root gives the attribute or submodule ``node`` reads."""
    return node.target.replace(".", "_")


def _size_of(size: fx.Node, data: list[fx.Node], env: dict[fx.Node, fx.Node], graph: fx.Graph) -> fx.Node | None:
    """``x.size(d)`` for the first data input ``x`` whose dim ``d`` is the SymInt ``size``."""
    value = size.meta.get("example_value")
    expr = getattr(getattr(value, "node", None), "expr", None)
    for p in data:
        shape = getattr(p.meta.get("example_value"), "shape", ())
        for d, s in enumerate(shape):
            if expr is not None and getattr(getattr(s, "node", None), "expr", None) == expr:
                return graph.call_method("size", (env[p], d))
    return None


class _Realigned:
    """The compiled function of a graph of independent fragments: the captured graph's inputs
    in, its outputs (in its order) out.

    It realigns on its first call, not when Dynamo compiles: exporting with a dynamic batch
    inside a backend breaks the guards Dynamo is building for the frame ("guard failed on the
    same frame it was created"). ``build(fragments, args)`` realigns the fragments for inputs
    like ``args`` and compiles the result (both returned), or returns None when they share
    nothing; then, or when realign refuses them (a RuntimeWarning says why), ``fallback()``
    compiles the captured graph unchanged, and every call runs that. A call whose data inputs do
    not fit the realigned module (other row shapes, as a graph with dynamic feature dims admits,
    or inputs of one fragment with different batch sizes, as a broadcast ``[1, F]`` argument
    has) runs the unchanged graph too. Realigning takes one lock (`_LOCK`) for every compiled
    function, since torch.export's tracing state is global; still, make the first call from one
    thread: Dynamo's own first compile of a frame is not thread-safe (torch 2.14 raised
    ``KeyError: 'custom'`` in ``fx.traceback.annotate`` under a cold multi-threaded start).
    """

    def __init__(self, fragments: list[Fragment], num_outputs: int,
                 build: Callable[[list[Fragment], Sequence[Any]], tuple[RealignedModule, Callable] | None],
                 fallback: Callable[[], Callable]):
        self.fragments = fragments
        self.num_outputs = num_outputs
        self.build = build
        self.fallback = fallback
        self.rm: RealignedModule | None = None
        self.module: Callable | None = None  # rm, compiled
        self.unchanged: Callable | None = None  # the graph compiled unchanged, once needed
        self.realigns = True  # False once realign refused or found nothing to share

    def __call__(self, *args: Any) -> Any:
        if self.realigns and self._stale(args):
            with _LOCK:
                if self._stale(args):
                    self._realign(args)
        if not self.realigns or not self._fits(args):
            return self._unchanged(*args)
        results = self.module(*_inputs(self.fragments, args))
        out: list[Any] = [None] * self.num_outputs
        for f, values in zip(self.fragments, results):
            for i, v in zip(f.outputs, values):
                out[i] = v
        return tuple(out)

    def _stale(self, args: Sequence[Any]) -> bool:
        """Whether to realign first: not yet, or a weight was replaced or updated in place (a
        compiled module cannot re-align itself)."""
        return self.rm is None or any(args[i] is not t for f in self.fragments for i, t in f.weights) \
            or self.rm.weights_updated()

    def _fits(self, args: Sequence[Any]) -> bool:
        """Whether every fragment's data inputs are rows the realigned module takes: one batch
        size per fragment, and each input's row shape and dtype as realigned."""
        for f, specs in zip(self.fragments, self.rm.input_specs):
            xs = [args[i] for i in f.data]
            if any(x.dim() == 0 or x.shape[0] != xs[0].shape[0] or tuple(x.shape[1:]) != s.row_shape
                   or x.dtype != s.dtype for x, s in zip(xs, specs)):
                return False
        return True

    def _unchanged(self, *args: Any) -> Any:
        if self.unchanged is None:
            with _LOCK:
                if self.unchanged is None:
                    self.unchanged = self.fallback()
        return self.unchanged(*args)

    def _realign(self, args: Sequence[Any]) -> None:
        """Realign the fragments with the weights passed now: on the first call, and after a
        parameter was replaced by a new tensor (Dynamo passes it without recompiling; which
        weights are equal may have changed)."""
        fragments = []
        for f in self.fragments:
            for k, (i, _) in enumerate(f.weights):
                _attach(f.gm, f"w{k}", args[i])
            fragments.append(Fragment(f.gm, f.data, f.outputs, tuple((i, args[i]) for i, _ in f.weights)))
        try:
            module = self.build(fragments, args)
        except GraftError as e:
            warnings.warn(f"graft backend: {len(fragments)} fragments not realigned ({e}); running the graph "
                          "unchanged", RuntimeWarning, stacklevel=3)
            module = None
        if module is None:
            self.realigns = False
            return
        counters["graft"]["realign"] += 1
        rm, compiled = module
        compiled(*_inputs(fragments, args))  # compiles under the lock: Dynamo's first compile is not thread-safe
        self.fragments, self.rm, self.module = fragments, rm, compiled


_LOCK = threading.RLock()
"""Held while realigning or compiling a graph unchanged, by any compiled function."""


def _attach(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Make ``tensor`` the module's ``name``: a parameter if it is one, else a buffer."""
    if name in root._parameters:
        del root._parameters[name]
    if name in root._buffers:
        del root._buffers[name]
    if isinstance(tensor, nn.Parameter):
        root.register_parameter(name, tensor)
    else:
        root.register_buffer(name, tensor)


def _example(x: torch.Tensor) -> torch.Tensor:
    """Two rows like ``x``'s for `realign` to capture with (it reads their shapes, dtypes and
    devices): a copy, as export marks its examples, and two rows, as it specializes 0 and 1."""
    if x.shape[0] >= 2:
        return x[:2].detach().clone()
    return torch.zeros((2, *x.shape[1:]), dtype=x.dtype, device=x.device)


def _inputs(fragments: list[Fragment], args: Sequence[Any]) -> list[Any]:
    """The RealignedModule's inputs: per fragment, its data tensor, or a tuple of several."""
    inputs = [tuple(args[i] for i in f.data) for f in fragments]
    return [x[0] if len(x) == 1 else x for x in inputs]


def graft(gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict | None = None, **_: Any) -> Callable:
    """The ``graft`` backend (module docstring). ``options``: ``compiler`` (one of `COMPILERS`,
    default ``"inductor"``), ``verify`` (default True: check the realigned module against the
    fragments run eagerly, as `realign` does), and `realign`'s ``min_flops_per_byte``,
    ``kernels`` and ``share``. Raises GraftError for an unknown option."""
    options = dict(options or {})
    compiler = options.pop("compiler", "inductor")
    if compiler not in COMPILERS:
        raise GraftError(f"graft backend: compiler={compiler!r}: expected one of {', '.join(COMPILERS)}")
    _check_options(options)
    inner = lookup_backend(compiler)
    fragments = fragments_of(gm, example_inputs)

    def build(fragments: list[Fragment], args: Sequence[Any]) -> tuple[RealignedModule, Callable] | None:
        rm = realign([f.gm for f in fragments], [pytree.tree_map(_example, x) for x in _inputs(fragments, args)],
                     **options)
        if not any(s.batched for s in rm.plan.segments):
            return None
        return rm, (rm if compiler == "eager" else torch.compile(rm, backend=compiler))

    if not fragments:
        return inner(gm, example_inputs)
    num_outputs = len(pytree.tree_leaves(next(n for n in gm.graph.nodes if n.op == "output").args[0]))
    return _Realigned(fragments, num_outputs, build, lambda: gm if compiler == "eager" else torch.compile(gm, backend=compiler))


def _check_options(options: dict) -> None:
    """GraftError for an option `realign` would refuse only on the first call, or not at all."""
    unknown = set(options) - {"verify", "min_flops_per_byte", "kernels", "share"}
    if unknown:
        raise GraftError(f"graft backend: unknown option(s) {sorted(unknown)}; expected compiler, verify, "
                         "min_flops_per_byte, kernels, share")
    checks = {"verify": (lambda v: isinstance(v, bool), "True or False"),
              "min_flops_per_byte": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                                     "a number of FLOPs per byte, 0 or more"),
              "kernels": (lambda v: v in KERNELS, f"one of {', '.join(KERNELS)}"),
              "share": (lambda v: v in SHARES, f"one of {', '.join(SHARES)}")}
    for name, value in options.items():
        ok, expected = checks[name]
        if not ok(value):
            raise GraftError(f"graft backend: {name}={value!r}: expected {expected}")


def register() -> None:
    """Register `graft` as torch.compile's ``"graft"`` backend, unless it is registered already or
    torch is loading it through the ``torch_dynamo_backends`` entry point right now (it registers
    what it loads: registering here too would be a duplicate)."""
    if NAME not in registry._COMPILER_FNS and registry._BACKENDS.get(NAME) is None:
        register_backend(graft, name=NAME)
