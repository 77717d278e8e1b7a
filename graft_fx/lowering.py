"""Lowering: rewrite patterns of a realigned graph into graft's kernel ops, by a table of rules.

A realigned graph runs shared layers on the rows of several fragments, which it first gathers
into one tensor (``torch.cat`` of narrow views, `rewrite._Emitter.gather`). Some of those
patterns have a fused kernel in `graft_fx.kernels`, one rule each, applied in this order:

- the per-segment linears of a layer whose fragments' weights differ (``share="structure"``),
  joined by one ``torch.cat``, become one ``graft::segment_matmul`` over their weights stacked;
  per-segment convolutions one ``graft::segment_conv2d``; per-segment eval-mode batch norms
  become one ``graft::segment_affine`` (each segment's scale
  and shift from its statistics), per-segment layer norms one ``layer_norm`` without affine
  parameters and one ``segment_affine``;
- a gather that feeds only a shared ``aten.linear`` becomes ``graft::gather_linear``, which
  reads each fragment's rows straight from its own tensor;
- in both, a relu or exact gelu that is the only user is fused into the kernel's epilogue;
- a gather left over becomes ``graft::gather``, one launch for every part (under
  ``kernels="triton"`` only, until a GPU shows where it beats ``torch.cat``).

Per-segment parameters are stacked once per layer (`_stack_for`) and shared by the graphs of
every subset of present fragments. They are copies: `RealignedModule` lowers its graphs again
when the fragments' own tensors were updated in place (which also re-applies the value guards,
such as `MAX_CENTERED_MEAN`).

Every rule is data (`Rule`, `RULES`, in the style of the separability table): the op a match
ends in, a matcher that reads the nodes around it and returns the kernel op's arguments, and
the op they become. `lower` runs the rules over a graph, replacing each match with one
``call_function`` of the kernel op, and counts each rewrite in
``torch._dynamo.utils.counters["graft"][rule.name]``, so a test can tell a real rewrite from a
silent fallback. Matchers see shapes through ``meta["val"]``, which `lower` fills by running the
graph on fake tensors (`FakeTensorProp`) of the present fragments' input specs.

``kernels`` selects the path (`KERNELS`): ``"torch"`` rewrites nothing; ``"triton"`` rewrites
every match (the kernel ops run Triton where it can run, their torch references elsewhere:
`kernels.dispatch`); ``"auto"``, the default, rewrites a match only on a CUDA device with Triton
installed and a weight of at least `MIN_WEIGHT_ELEMENTS` elements, where the kernel is expected
to be faster (launch-bound small layers stay on the library ops); matches without such a weight
(gathers, norms) wait for a GPU measurement.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .capture import fetch_attr
from .errors import GraftError

aten = torch.ops.aten

KERNELS = ("auto", "triton", "torch")
MIN_WEIGHT_ELEMENTS = 1 << 16
"""``"auto"`` lowers a layer only when its weight has at least this many elements (a 256 x 256
linear): below it a layer is launch-bound and the library op is as fast. Not measured yet on a
GPU (benchmarks/gpu_check.sh measures the kernels against torch); until then, a floor."""

_ACTIVATIONS = {aten.relu.default: "relu", aten.gelu.default: "gelu"}  # fused when the only user
_MATMUL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the matmul kernels take
MAX_CENTERED_MEAN = 16.0
"""A batch norm is lowered only where every ``|running_mean| / sqrt(running_var + eps)`` is at
most this. Eager batch norm on a CPU folds the mean into a shift (``x * a + (b - mean * a)``),
which loses about that ratio in units of the last place to cancellation; ``segment_affine``
centres first, as the CUDA kernel does. Beyond it the two roundings part by more than the float
tolerance, so the per-segment form (eager's own op) stays."""


@dataclass(frozen=True)
class Match:
    """What a rule found: the node whose value the kernel op replaces (``last``), the nodes the
    rewrite makes dead (producers first), one layer's weight (for the "auto" threshold and
    device), and ``build(context)``, which adds what the op's arguments need to the graph (before
    the anchor) and returns ``(args, kwargs)``; it runs only when the rewrite is made. A match
    without a weight (a plain gather) is never lowered by "auto": it has not been measured to beat
    the library op."""

    last: fx.Node
    dead: tuple[fx.Node, ...]
    weight: torch.Tensor | None
    build: Callable[[_Context], tuple[tuple, dict]]
    finish: Callable[[fx.Graph, fx.Node], fx.Node] | None = None  # shapes the op's result, if needed


@dataclass(frozen=True)
class Rule:
    """``name``: the counter's key; ``anchor``: the op a match ends in; ``match(node)`` reads the
    pattern around an anchor node (a `Match`, or None); ``op``: the name of the kernel op it
    becomes, ``torch.ops.graft.<op>`` (resolved when a rewrite is made: `_kernel`)."""

    name: str
    anchor: Any
    match: Callable[[fx.Node], Match | None]
    op: str


@dataclass(frozen=True)
class _Stack:
    """Per-segment parameters stacked for one kernel op: ``tensors`` (what the op takes), made
    from the ``sources`` whose identities are ``ids``, in segment order (the sources are kept
    alive: their ids must stay theirs)."""

    kind: Any
    ids: tuple[tuple[int | None, ...], ...]
    tensors: tuple[torch.Tensor | None, ...]
    sources: tuple


@dataclass(frozen=True)
class _Context:
    """What building a rewrite's arguments may use: the graph module, and the stacks made so far
    (shared by the graphs of one RealignedModule: see `_stack_for`)."""

    gm: fx.GraphModule
    stacks: list[_Stack]


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _is_cat(node: Any) -> bool:
    """A row concatenation: ``torch.cat(parts, 0)`` (the realigned graph's gathers and joins)."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in (torch.cat, aten.cat.default):
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim == 0 and isinstance(node.args[0], (list, tuple))


def _activation(node: fx.Node) -> tuple[fx.Node, str]:
    """The relu or exact gelu that is ``node``'s only user, to fuse (and its name), else
    ``(node, "none")``."""
    if len(node.users) == 1:
        (user,) = node.users
        act = _ACTIVATIONS.get(user.target)
        if act is not None and len(user.args) == 1 and user.kwargs.get("approximate", "none") == "none":
            return user, act
    return node, "none"


def _gathered_linear(node: fx.Node) -> Match | None:
    """``linear(cat(xs, 0), w, b)`` with the cat used only here and 2-D rows: the kernel reads
    each ``x`` in place. A relu or exact gelu that is the linear's only user is fused in."""
    x, w, b = (list(node.args) + [None])[:3]
    if node.kwargs or not _is_cat(x) or len(x.users) != 1:
        return None
    xs, weight = list(x.args[0]), _val(w)
    if weight is None or weight.dim() != 2 or weight.dtype not in _MATMUL_DTYPES:
        return None
    if any(_val(p) is None or _val(p).dim() != 2 for p in xs):
        return None
    last, activation = _activation(node)
    dead = (x, node) if last is node else (x, node, last)
    return Match(last, dead, weight, lambda context: ((xs, w, b), {"activation": activation}))


def _segments_of(node: fx.Node, target: Any) -> list[fx.Node] | None:
    """The parts of ``node`` when it is the per-segment form of one layer (``rewrite.py``): a row
    ``cat`` of at least two calls of ``target``, each used only by the cat, without kwargs."""
    if not _is_cat(node) or len(node.args[0]) < 2:
        return None
    parts = list(node.args[0])
    if any(not isinstance(p, fx.Node) or p.target is not target or p.kwargs or len(p.users) != 1 for p in parts):
        return None
    return parts


def _weights_of(parts: list[fx.Node], positions: tuple[int, ...]) -> list[tuple] | None:
    """Per part, its arguments at ``positions`` (weights): each a ``get_attr`` in every part, or
    absent (None) in every part; None when the parts disagree or a weight is computed."""
    table = [tuple(p.args[i] if i < len(p.args) else None for i in positions) for p in parts]
    for column in zip(*table):
        if len({w is None for w in column}) != 1 or any(w is not None and w.op != "get_attr" for w in column):
            return None
    return table


def _sizes(graph: fx.Graph, xs: list[fx.Node], stack: _Stack, positions: list[int], scale: int = 1) -> list[Any]:
    """The op's segment sizes over ``stack``: each part's rows (times ``scale``) at its position,
    0 for the segments of fragments absent from this graph."""
    full: list[Any] = [0] * len(stack.ids)
    for x, position in zip(xs, positions):
        size = graph.call_method("size", (x, 0))
        full[position] = size if scale == 1 else graph.call_function(operator.mul, (size, scale))
    return full


def _stack_weight_and_bias(segments: list[tuple]) -> tuple:
    """Per-segment ``(weight, bias)`` pairs as a stacked weight ``[G, ...]`` and a stacked bias
    ``[G, ...]`` (None where the layer has none)."""
    return (torch.stack([w for w, _ in segments]),
            None if segments[0][1] is None else torch.stack([b for _, b in segments]))


def _rows(graph: fx.Graph, xs: list[fx.Node]) -> fx.Node:
    """The parts' rows as one tensor: the tensor they were cut from, or their concatenation."""
    return _whole(xs) or graph.call_function(torch.cat, (xs, 0))


def _segment_linears(node: fx.Node) -> Match | None:
    """``cat([linear(x_i, w_i, b_i) for each segment], 0)``, the per-segment form of a linear
    whose fragments' weights differ (``rewrite.py``), with weights of one shape: one
    ``segment_matmul`` over the rows (gathered once) and the stacked weights. Rows of more than
    one dim (tokens: ``[m, T, K]``, ``T`` static) are flattened to ``[m T, K]`` for the op and its
    result shaped back. A relu or exact gelu after the cat is fused in."""
    parts = _segments_of(node, aten.linear.default)
    weights = parts and _weights_of(parts, (1, 2))
    if not weights or weights[0][0] is None:
        return None
    vals = [_val(w) for w, _ in weights]
    if any(v is None or v.dim() != 2 or v.shape != vals[0].shape or v.dtype not in _MATMUL_DTYPES for v in vals):
        return None
    xs = [p.args[0] for p in parts]
    rows_vals = [_val(x) for x in xs]
    if any(r is None or r.dim() < 2 for r in rows_vals):
        return None
    mid = tuple(rows_vals[0].shape[1:-1])
    if any(not isinstance(d, int) for d in mid) or any(tuple(r.shape[1:-1]) != mid for r in rows_vals):
        return None
    n, k = vals[0].shape
    last, activation = _activation(node)
    dead = (*parts, node) if last is node else (*parts, node, last)

    def stack(segments: list[tuple]) -> tuple:
        # [G, N, K] stacked, read as [G, K, N] through a transposed view: no copy beyond the stack
        weight, bias = _stack_weight_and_bias(segments)
        return weight.transpose(1, 2), bias

    def build(context: _Context) -> tuple[tuple, dict]:
        graph = context.gm.graph
        rows = _rows(graph, xs)
        if mid:
            rows = graph.call_method("reshape", (rows, -1, k))
        stacked, positions = _stack_for(context, "linear", weights, stack)
        weight, bias = (None if t is None else _buffer(context.gm, t) for t in stacked.tensors)
        return (rows, weight, _sizes(graph, xs, stacked, positions, math.prod(mid)), bias), {"activation": activation}

    def finish(graph: fx.Graph, out: fx.Node) -> fx.Node:
        return graph.call_method("reshape", (out, -1, *mid, n)) if mid else out

    return Match(last, dead, vals[0], build, finish)


_CONV_DEFAULTS = (None, None, None, [1, 1], [0, 0], [1, 1], 1)  # aten.conv2d.default's trailing defaults


def _segment_convolutions(node: fx.Node) -> Match | None:
    """``cat([conv2d(x_i, w_i, b_i, stride, padding, dilation, groups) ...], 0)``, convolutions
    whose fragments' weights differ, with one stride, padding, dilation and groups: one
    ``segment_conv2d`` over the stacked weights (a grouped convolution over channel-stacked rows
    when the segments are equal, else one convolution per segment)."""
    parts = _segments_of(node, aten.conv2d.default)
    weights = parts and _weights_of(parts, (1, 2))
    if not weights:
        return None
    options = [tuple(list(p.args) + list(_CONV_DEFAULTS[len(p.args):]))[3:] for p in parts]
    if any(o != options[0] for o in options):
        return None
    vals = [_val(w) for w, _ in weights]
    xs = [p.args[0] for p in parts]
    if any(v is None or v.shape != vals[0].shape or v.dtype not in _MATMUL_DTYPES for v in vals):
        return None
    if any(_val(x) is None or _val(x).dim() != 4 for x in xs):
        return None

    def build(context: _Context) -> tuple[tuple, dict]:
        graph = context.gm.graph
        stacked, positions = _stack_for(context, "conv2d", weights, _stack_weight_and_bias)
        weight, bias = (None if t is None else _buffer(context.gm, t) for t in stacked.tensors)
        return (_rows(graph, xs), weight, bias, _sizes(graph, xs, stacked, positions), *options[0]), {}

    return Match(node, (*parts, node), vals[0], build)


def _segment_batch_norms(node: fx.Node) -> Match | None:
    """``cat([batch_norm(x_i, w_i, b_i, mean_i, var_i, False, momentum, eps, cudnn) ...], 0)``,
    eval-mode batch norms whose fragments' statistics or affine parameters differ: one
    ``segment_affine`` with ``center = mean``, ``scale = w / sqrt(var + eps)`` and ``shift = b``
    per segment (what eval-mode batch norm computes, centred first), stacked ``[G, C, 1, ...]``."""
    parts = _segments_of(node, aten.batch_norm.default)
    weights = parts and _weights_of(parts, (1, 2, 3, 4))
    if not weights or any(w[2] is None or w[3] is None for w in weights):
        return None
    if any(len(p.args) < 8 or p.args[5] is not False or p.args[7] != parts[0].args[7] for p in parts):
        return None  # training, or different eps
    gm = node.graph.owning_module
    for segment in weights:
        mean, var = (fetch_attr(gm, n.target) for n in segment[2:])
        ratio = mean.abs() * torch.rsqrt(var + parts[0].args[7])
        if ratio.numel() and float(ratio.max()) > MAX_CENTERED_MEAN:
            return None
    xs = [p.args[0] for p in parts]
    rows_vals = [_val(x) for x in xs]
    if any(r is None or r.dim() < 2 or r.dtype not in _MATMUL_DTYPES for r in rows_vals):
        return None
    eps, rank = parts[0].args[7], rows_vals[0].dim()

    def stack(segments: list[tuple]) -> tuple:
        scale = [torch.rsqrt(var + eps) * (1 if w is None else w) for w, _, _, var in segments]
        shift = [torch.zeros_like(mean) if b is None else b for _, b, mean, _ in segments]
        trailing = (1,) * (rank - 2)
        return tuple(torch.stack(t).reshape(len(segments), -1, *trailing)
                     for t in (scale, shift, [mean for _, _, mean, _ in segments]))

    def build(context: _Context) -> tuple[tuple, dict]:
        graph = context.gm.graph
        stacked, positions = _stack_for(context, ("batch_norm", eps, rank), weights, stack)
        scale, shift, center = (_buffer(context.gm, t) for t in stacked.tensors)
        return (_rows(graph, xs), scale, shift, _sizes(graph, xs, stacked, positions), center), {}

    return Match(node, (*parts, node), None, build)


def _segment_layer_norms(node: fx.Node) -> Match | None:
    """``cat([layer_norm(x_i, shape, w_i, b_i, eps, cudnn) ...], 0)``, layer norms whose
    fragments' affine parameters differ: one ``layer_norm`` without them over all rows, then one
    ``segment_affine`` with each segment's weight and bias, stacked ``[G, 1, ..., *shape]``."""
    parts = _segments_of(node, aten.layer_norm.default)
    weights = parts and _weights_of(parts, (2, 3))
    if not weights or all(w is None for segment in weights for w in segment):
        return None
    if any(p.args[1] != parts[0].args[1] or p.args[4:5] != parts[0].args[4:5] for p in parts):
        return None
    xs = [p.args[0] for p in parts]
    rows_vals = [_val(x) for x in xs]
    if any(r is None or r.dtype not in _MATMUL_DTYPES for r in rows_vals):
        return None
    shape, rank = list(parts[0].args[1]), rows_vals[0].dim()
    eps = parts[0].args[4] if len(parts[0].args) > 4 else 1e-5

    def stack(segments: list[tuple]) -> tuple:
        leading = (len(segments),) + (1,) * (rank - 1 - len(shape))
        w0 = next(t for pair in segments for t in pair if t is not None)
        scale = torch.stack([torch.ones_like(w0) if w is None else w for w, _ in segments])
        shift = None if segments[0][1] is None else torch.stack([b for _, b in segments])
        return tuple(None if t is None else t.reshape(*leading, *shape) for t in (scale, shift))

    def build(context: _Context) -> tuple[tuple, dict]:
        graph = context.gm.graph
        normed = graph.call_function(aten.layer_norm.default, (_rows(graph, xs), shape, None, None, eps))
        stacked, positions = _stack_for(context, ("layer_norm", tuple(shape), rank), weights, stack)
        scale, shift = (None if t is None else _buffer(context.gm, t) for t in stacked.tensors)
        return (normed, scale, shift, _sizes(graph, xs, stacked, positions)), {}

    return Match(node, (*parts, node), None, build)


def _whole(xs: list[fx.Node]) -> fx.Node | None:
    """The tensor that ``xs`` cut into consecutive pieces along dim 0 from its first row to its
    last (``narrow(t, 0, 0, n_0)``, ``narrow(t, 0, n_0, n_1)``, ``narrow(t, 0, n_0 + n_1, n_2)``,
    ... as the realigned graph slices a class's rows), or None. The chain of starts is checked
    node by node; that it reaches the last row is checked on the fake example, whose every
    fragment has rows, so a chain that covers it there covers every fragment of the tensor."""
    if any(x.op != "call_method" or x.target != "narrow" or len(x.args) != 4 or x.args[1] != 0 for x in xs):
        return None
    whole = xs[0].args[0]
    if xs[0].args[2] != 0 or any(x.args[0] is not whole for x in xs):
        return None
    for i in range(1, len(xs)):
        start, before = xs[i].args[2], xs[i - 1]
        chained = start is before.args[3] if i == 1 else (
            isinstance(start, fx.Node) and start.target is operator.add and start.args == (before.args[2], before.args[3]))
        if not chained:
            return None
    total, rows = _val(whole), [_val(x) for x in xs]
    if total is None or any(r is None for r in rows) or total.shape[0] != sum(r.shape[0] for r in rows):
        return None
    return whole


def _gather(node: fx.Node) -> Match | None:
    """A row concatenation left after the rules before (a junction where fragments meet):
    ``graft::gather`` writes every part into one buffer in one launch."""
    if not _is_cat(node) or len(node.args[0]) < 2 or any(_val(p) is None for p in node.args[0]):
        return None
    parts = list(node.args[0])
    return Match(node, (node,), None, lambda context: ((parts,), {}))


def _stack_for(context: _Context, kind: Any, weights: list[tuple],
               stack: Callable[[list[tuple]], tuple]) -> tuple[_Stack, list[int]]:
    """A stack of ``kind`` holding these segments' parameters (``weights``: per segment, its
    ``get_attr`` nodes or None) in this order, and the position of each segment in it. The graph
    of every fragment (built first) stacks each layer's parameters for all its runs; the graph
    of a subset reuses that stack, its absent runs getting segments of 0 rows, so a module holds
    one stacked copy per layer, not one per set of present fragments. ``stack`` makes the
    tensors from the per-segment parameter tensors (under ``no_grad``)."""
    gm = context.gm
    sources = [tuple(None if w is None else fetch_attr(gm, w.target) for w in segment) for segment in weights]
    ids = [tuple(None if t is None else id(t) for t in segment) for segment in sources]
    for existing in context.stacks:
        positions = _subsequence(ids, existing.ids) if existing.kind == kind else None
        if positions is not None:
            return existing, positions
    with torch.no_grad():
        tensors = stack([tuple(None if t is None else t.detach() for t in segment) for segment in sources])
    context.stacks.append(_Stack(kind, tuple(ids), tensors, tuple(sources)))
    return context.stacks[-1], list(range(len(ids)))


def _subsequence(short: list, long: tuple) -> list[int] | None:
    """The positions in ``long`` of ``short``'s items, in order (greedy), or None."""
    positions, start = [], 0
    for item in short:
        try:
            start = long.index(item, start)
        except ValueError:
            return None
        positions.append(start)
        start += 1
    return positions


def _buffer(gm: fx.GraphModule, tensor: torch.Tensor) -> fx.Node:
    """A ``get_attr`` of ``tensor``, registered on ``gm`` as a non-persistent buffer."""
    k = 0
    while hasattr(gm, f"stacked_weights_{k}"):
        k += 1
    gm.register_buffer(f"stacked_weights_{k}", tensor, persistent=False)
    return gm.graph.get_attr(f"stacked_weights_{k}")


def _kernel(name: str) -> Any:
    """The overload of ``torch.ops.graft.<name>`` (importing the kernels registers them; they
    import Triton, so not before a rewrite needs one)."""
    from . import kernels  # noqa: F401 - registers torch.ops.graft.*

    return getattr(torch.ops.graft, name).default


RULES: tuple[Rule, ...] = (
    # per-segment linears first: their segments' own gathers would otherwise become gather_linear
    Rule("segment_matmul", torch.cat, _segment_linears, "segment_matmul"),
    Rule("segment_conv2d", torch.cat, _segment_convolutions, "segment_conv2d"),
    Rule("segment_batch_norm", torch.cat, _segment_batch_norms, "segment_affine"),
    Rule("segment_layer_norm", torch.cat, _segment_layer_norms, "segment_affine"),
    Rule("gather_linear", aten.linear.default, _gathered_linear, "gather_linear"),
    Rule("gather", torch.cat, _gather, "gather"),  # last: the joins the rules before did not take
)


def lower(gm: fx.GraphModule, example_inputs: Sequence[Any], kernels: str = "auto",
          rules: Sequence[Rule] = RULES, stacks: list | None = None) -> fx.GraphModule:
    """Rewrite the matches of ``rules`` in ``gm`` into kernel ops, in place; returns ``gm``.

    ``example_inputs``: the graph's inputs (tensors, or None for an absent fragment's), whose
    shapes and dtypes stand for any batch size; they are only faked. ``kernels``: see the module
    docstring. ``stacks``: stacked weights to reuse across graphs of one module (filled here).
    Rules apply in order, each over the whole graph. Raises GraftError for an unknown ``kernels``.
    """
    if kernels not in KERNELS:
        raise GraftError(f"kernels={kernels!r}: expected one of {', '.join(KERNELS)}")
    if kernels == "torch" or (kernels == "auto" and not _on_cuda(example_inputs)):
        return gm
    anchors = {r.anchor for r in rules}
    if not any(n.op == "call_function" and n.target in anchors for n in gm.graph.nodes):
        return gm
    try:  # weights stay real (get_attr): the mode fakes them as it meets them
        FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*example_inputs)
    except Exception as e:  # noqa: BLE001 - a graph fake tensors cannot run keeps the library ops
        warnings.warn(f"graph not lowered to graft's kernels: fake propagation failed ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=2)
        return gm
    context = _Context(gm, [] if stacks is None else stacks)
    erased: set[fx.Node] = set()
    for rule in rules:
        for node in list(gm.graph.nodes):
            if node in erased or node.op != "call_function" or node.target is not rule.anchor:
                continue
            match = rule.match(node)
            if match is None or not _worth(match, kernels):
                continue
            with gm.graph.inserting_before(node):
                args, kwargs = match.build(context)
                fused = gm.graph.call_function(_kernel(rule.op), args, kwargs)
                if match.finish is not None:
                    fused = match.finish(gm.graph, fused)
            fused.meta.update(match.last.meta)
            match.last.replace_all_uses_with(fused)
            _rename_values(gm, match, fused)
            for dead in reversed(match.dead):
                gm.graph.erase_node(dead)
            erased.update(match.dead)
            counters["graft"][rule.name] += 1
    if erased:
        for unused in [n for n in gm.graph.nodes if n.op == "get_attr" and not n.users]:
            gm.graph.erase_node(unused)  # the per-fragment weights the stacks replaced
        gm.graph.lint()
        gm.recompile()
    return gm


def _rename_values(gm: fx.GraphModule, match: Match, fused: fx.Node) -> None:
    """Keep ``gm.meta["graft_values"]`` (class -> the node holding its value, which
    ``verify`` reads to name the first differing node) true: the node a rewrite replaces now
    lives in ``fused``; the values it fused away are gone."""
    values = gm.meta.get("graft_values")
    if values is None:
        return
    dead = {n.name for n in match.dead}
    for index, name in list(values.items()):
        if name == match.last.name:
            values[index] = fused.name
        elif name in dead:
            del values[index]


def _on_cuda(example_inputs: Sequence[Any]) -> bool:
    """Whether "auto" could lower anything: Triton installed and an input on a CUDA device."""
    from .kernels.dispatch import HAS_TRITON

    return HAS_TRITON and any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs)


def _worth(match: Match, kernels: str) -> bool:
    """Whether to rewrite ``match``: always when ``kernels="triton"``; under ``"auto"`` only on a
    CUDA device with Triton installed, for a weight of at least `MIN_WEIGHT_ELEMENTS`."""
    if kernels == "triton":
        return True
    from .kernels.dispatch import HAS_TRITON

    weight = match.weight
    return HAS_TRITON and weight is not None and weight.device.type == "cuda" and weight.numel() >= MIN_WEIGHT_ELEMENTS
