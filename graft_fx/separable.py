"""The batch-separability rule table over ATen ops, and the role each node plays in re-alignment.

An op is *batch-separable* when the slice of its output that belongs to sample ``i`` depends
only on sample ``i`` of its inputs (and on constants). Such an op gives the same rows whether it
runs on one fragment's batch or on the rows of several fragments concatenated, so re-alignment
may share it. Everything else stays in its fragment's private part.

The table is data (in the style of tinygrad's rewrite rules): each ATen op name (the overload
packet, so ``aten.add.Tensor`` and ``aten.add.Scalar`` share one entry) maps to a ``Rule``: a
check that reads the op's arguments as the schema orders them and returns the ``rows.Layout`` of
the output (where its batch lives) with ``reason=None`` when the op is separable, or the reason
why not. ``keeps`` marks ops that are not separable but keep each sample's rows where they were
(batch norm with batch statistics, softmax over the batch, an op that uses the batch size as a
value): they stay private, computed per fragment, and their output may be concatenated with
other fragments' rows again further down. Each entry's ``why`` says what makes the op separable.

Judged by what runs, not by what a module is called: batch norm is shared when its ``training``
argument is literally False *and* running statistics are passed (``BatchNorm2d`` with
``track_running_stats=False`` normalises with batch statistics even in eval mode); a reduction,
softmax or norm by whether its dims, after normalisation (negative dims, lists, "all dims"),
include the batch's dim; a size argument may hold the batch symbol only where the op makes a
tensor of that many rows; any other use of the batch size as a value (``h / h.shape[0]``,
``torch.full_like(h, h.size(0))``) makes the op private, computed per fragment. Unknown ops are
private, and so is everything downstream of them that is not proven to carry rows.

The symbolic shapes (``facts.py``) cross-check every verdict: a rule's layout must agree with the
dim that the output's shape says holds the batch, or the op is kept private.
"""

from __future__ import annotations

import enum
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import sympy
import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .facts import Facts, Kind, hint
from .rows import Layout


class Role(enum.Enum):
    INPUT = "input"
    SHARED = "shared"
    PRIVATE_ROWS = "private, keeps rows"
    PRIVATE = "private"
    CONST = "const"
    FOLDED = "folded"
    CHECK = "check"
    WRITE = "write-back"


GATHERABLE = (Role.INPUT, Role.SHARED, Role.PRIVATE_ROWS)


@dataclass(frozen=True)
class Verdict:
    """A node's role, the layout of its rows (for gatherable roles) and why it is private."""

    role: Role
    reason: str = ""
    layout: Any = None


@dataclass(frozen=True)
class Result:
    """What a rule says: the output's layout, and the reason the op is not separable (if any)."""

    layout: Any = None
    reason: str | None = None
    keeps: bool = False


BATCH_VALUE = object()
"""Stands for an argument whose value depends on the batch size, in ``Site.lit``."""


class Site:
    """One node as a rule sees it: arguments by schema position, their layouts and shapes."""

    def __init__(self, node: fx.Node, facts: dict[fx.Node, Facts], verdicts: dict[fx.Node, Verdict]):
        self.node = node
        self.facts = facts
        self.verdicts = verdicts
        schema = getattr(node.target, "_schema", None)
        self.names = [a.name for a in schema.arguments] if schema else []

    def arg(self, index: int, default: Any = None) -> Any:
        """Argument ``index`` of the schema, positional or keyword."""
        if index < len(self.node.args):
            return self.node.args[index]
        if index < len(self.names):
            return self.node.kwargs.get(self.names[index], default)
        return default

    def lit(self, index: int, default: Any = None) -> Any:
        """The argument's literal value; ``BATCH_VALUE`` in place of anything that depends on the
        batch, and of tensors."""

        def value(a: Any) -> Any:
            if isinstance(a, fx.Node):
                f = self.facts[a]
                if f.kind is not Kind.SCALAR:
                    return BATCH_VALUE
                s = f.scalar
                if isinstance(s, sympy.Basic):
                    return BATCH_VALUE if s.free_symbols else (int(s) if s.is_Integer else float(s))
                return s
            if isinstance(a, (list, tuple)):
                return type(a)(value(x) for x in a)
            return a

        return value(self.arg(index, default))

    def layout(self, a: Any) -> Any:
        return self.verdicts[a].layout if isinstance(a, fx.Node) else None

    def ndim(self, a: fx.Node) -> int:
        return self.facts[a].value.dim()

    def shape(self, a: fx.Node) -> tuple[int, ...]:
        return tuple(int(hint(d)) for d in self.facts[a].value.shape)

    def rows_args(self) -> list[tuple[int, fx.Node, Layout]]:
        """(schema position, node, layout) of every tensor argument that carries rows."""
        found = []
        for i in range(max(len(self.node.args), len(self.names))):
            for n in _nodes_in(self.arg(i)):
                if isinstance(self.layout(n), Layout):
                    found.append((i, n, self.layout(n)))
        return found

    def batch_valued(self, sizes: tuple[int, ...]) -> list[int]:
        """Positions outside ``sizes`` whose argument is a value that depends on the batch."""
        return [i for i in range(max(len(self.node.args), len(self.names)))
                if i not in sizes and any(self.facts[n].kind is Kind.SCALAR and _batch_dependent(self.facts[n])
                                          for n in _nodes_in(self.arg(i)))]

    @property
    def out(self) -> Facts:
        return self.facts[self.node]


def _batch_dependent(f: Facts) -> bool:
    return any(isinstance(s, sympy.Basic) and s.free_symbols for s in pytree.tree_leaves(f.scalar))


def _nodes_in(a: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(a, found.append)
    return found


def _dims(dims: Any, ndim: int) -> set[int] | None:
    """Normalised dims (negative wrapped, int or list); None for "every dim" or unknown."""
    if dims is None or dims is BATCH_VALUE:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims or BATCH_VALUE in dims:
        return None
    return {d + ndim if d < 0 else d for d in dims}


def _out_layout(site: Site) -> Layout | None:
    """The layout the output's shape implies when its rows are all alike (filled, expanded)."""
    f = site.out
    return Layout(f.batch_dim, 1, f.factor) if f.kind is Kind.ROWS and f.is_tensor else None


Check = Callable[[Site], Result]


@dataclass(frozen=True)
class Rule:
    check: Check
    why: str
    sizes: tuple[int, ...] = ()  # argument positions where the batch symbol may stand as a size


def _private(reason: str, layout: Any = None) -> Result:
    return Result(layout, reason, keeps=layout is not None)


# --- checks -----------------------------------------------------------------------------------


def _first_rows(site: Site) -> tuple[fx.Node, Layout] | None:
    rows = site.rows_args()
    return (rows[0][1], rows[0][2]) if rows else None


def pointwise(site: Site) -> Result:
    """Elementwise with broadcasting: every rows argument puts its batch in one output dim."""
    out_ndim = site.out.value.dim()
    aligned = {(lay.dim + out_ndim - site.ndim(n), lay.outer, lay.inner) for _, n, lay in site.rows_args()}
    if not aligned:
        return Result(_out_layout(site))
    if len(aligned) > 1:
        return _private("its inputs hold the batch in different dims, so rows would pair up wrongly")
    dim, outer, inner = aligned.pop()
    return Result(Layout(dim, outer, inner))


def batch_dim_zero(site: Site) -> Result:
    """Convolutions, pooling, channel norms, eval batch norm, upsampling, pads, pixel shuffles,
    unfold and fold: ops that compute output index ``j`` of dim 0 from input index ``j`` of dim 0
    alone (and from weights), the same way for every ``j``.

    So any layout with the batch in dim 0 is separable, not only ``Layout(0)``: with a folded
    batch (``Layout(0, inner=k)`` after ``x.flatten(0, 1)``, or ``outer > 1``) each index of dim
    0 is still computed on its own, output index ``j`` belongs to the sample input index ``j``
    belongs to, and the output (every tuple part with rows) keeps the input's layout. Two things
    would break that and keep the op private: weight arguments that depend on the batch (they
    would pair one fragment's rows with another's weights), and an unbatched input (``UNBATCHED``:
    a 3-d input of ``conv2d`` or ``pixel_shuffle``), whose dim 0 the op reads as channels.
    """
    first = site.arg(0)
    lay = site.layout(first)
    stray = [n.name for i, n, _ in site.rows_args() if i != 0]
    if stray:
        return _private(f"its weight arguments {stray} depend on the batch")
    if not isinstance(lay, Layout) or lay.dim != 0:
        return _private(f"it works within each index of dim 0, but its input holds the batch as {lay}")
    if site.ndim(first) <= UNBATCHED.get(op_name(site.node), -1):
        return _private("its input is unbatched, so it reads dim 0 (the batch's) as channels")
    return Result(_per_output(site, lay))


def _per_output(site: Site, layout: Layout) -> Any:
    """A layout for each tensor of a tuple output: ``layout`` where the shape has the batch."""
    parts = site.out.parts
    if parts is None:
        return layout
    return tuple(layout.moved(p.batch_dim) if p.kind is Kind.ROWS else None for p in parts)


def weights_const(*rows_positions: int) -> Check:
    def check(site: Site) -> Result:
        stray = [n.name for i, n, _ in site.rows_args() if i not in rows_positions]
        return _private(f"its weight arguments {stray} depend on the batch") if stray else Result()
    return check


def linear(site: Site) -> Result:
    """``linear(x, w, b)`` contracts x's last dim: the batch may be in any other."""
    bad = weights_const(0)(site)
    if bad.reason:
        return bad
    x = site.arg(0)
    lay = site.layout(x)
    if lay.dim == site.ndim(x) - 1:
        return _private("the batch is in the last dim, which it contracts")
    return Result(lay)


def batch_norm(site: Site) -> Result:
    """``batch_norm(x, w, b, running_mean, running_var, training, ...)``."""
    if site.lit(5) is not False or site.arg(3) is None:
        return _private("it normalises with the statistics of the batch (training=True or no running "
                        "statistics, as BatchNorm with track_running_stats=False)", site.layout(site.arg(0)))
    return batch_dim_zero(site)


def training_flag(position: int) -> Check:
    """Dropout: an identity when its ``train`` argument is literally False."""
    def check(site: Site) -> Result:
        if site.lit(position) is not False:
            return _private("it draws a random mask in training mode", site.layout(site.arg(0)))
        return pointwise(site)
    return check


def along(dim_position: int, default: Any = None, keepdim_position: int | None = None, keeps: bool = True) -> Check:
    """Ops along ``dims`` (softmax, cumsum, reductions): separable unless the batch's dim is one.

    Reductions (``keepdim_position`` given) drop their dims unless keepdim; ``keeps`` says that an
    op over the batch still keeps each sample's rows in place (softmax) rather than reducing them.
    """
    def check(site: Site) -> Result:
        x = site.arg(0)
        lay = site.layout(x)
        dims = _dims(site.lit(dim_position, default), site.ndim(x))
        if dims is None or lay.dim in dims:
            reason = "it works along the batch's dim" if dims is not None else "it works along every dim, the batch's included"
            return _private(reason, lay if keeps else None)
        if keepdim_position is not None and not site.lit(keepdim_position, False):
            return Result(_per_output(site, lay.moved(lay.dim - sum(d < lay.dim for d in dims))))
        return Result(_per_output(site, lay))
    return check


def norm_last_dims(shape_position: int) -> Check:
    """``layer_norm(x, normalized_shape, ...)``: normalises the last dims, not the batch's."""
    def check(site: Site) -> Result:
        bad = weights_const(0)(site)
        if bad.reason:
            return bad
        x = site.arg(0)
        lay = site.layout(x)
        shape = site.lit(shape_position)
        if BATCH_VALUE in pytree.tree_leaves(shape) or lay.dim >= site.ndim(x) - len(shape):
            return _private("it normalises over the batch's dim too", lay)
        return Result(_per_output(site, lay))
    return check


def _reshaped(site: Site, x: fx.Node) -> Result:
    """A pure reshape keeps sample i's elements together iff, in row-major order, the elements
    before the batch and the elements after it are the same in number on both sides."""
    lay = site.layout(x)
    out = site.out
    if out.kind is not Kind.ROWS:
        return _private("it mixes the batch with other dims")
    shape_in, shape_out = site.shape(x), tuple(int(hint(d)) for d in out.value.shape)
    before_in = math.prod(shape_in[: lay.dim]) * lay.outer
    after_in = lay.inner * math.prod(shape_in[lay.dim + 1:])
    after_out_dims = math.prod(shape_out[out.batch_dim + 1:])
    if after_out_dims == 0 or after_in % after_out_dims:
        return _private("it splits a sample's elements across the batch's dim")
    inner = after_in // after_out_dims
    if inner == 0 or out.factor % inner:
        return _private("it splits a sample's elements across the batch's dim")
    outer = out.factor // inner
    if math.prod(shape_out[: out.batch_dim]) * outer != before_in:
        return _private("it mixes the batch with other dims")
    return Result(Layout(out.batch_dim, outer, inner))


def reshape(site: Site) -> Result:
    x = site.arg(0)
    if not isinstance(site.layout(x), Layout):
        return Result(_out_layout(site))  # a constant reshaped to a batch of equal rows
    return _reshaped(site, x)


def squeeze(site: Site) -> Result:
    """Squeezing a size-1 dim is a reshape, unless the batch's dim could be the one (1 row)."""
    x = site.arg(0)
    lay = site.layout(x)
    dims = _dims(site.lit(1), site.ndim(x))
    may_vanish = lay.outer * lay.inner == 1 and (dims is None or lay.dim in dims)
    if may_vanish:
        return _private("it removes the batch's dim when the batch has one row", None)
    return _reshaped(site, x)


def expand(site: Site) -> Result:
    """``expand(x, size)``: new leading dims and size-1 dims broadcast; the batch's dim stays."""
    x = site.arg(0)
    lay = site.layout(x)
    if not isinstance(lay, Layout):
        return Result(_out_layout(site))
    return Result(lay.moved(lay.dim + site.out.value.dim() - site.ndim(x)))


def permute(site: Site) -> Result:
    x = site.arg(0)
    lay = site.layout(x)
    dims = site.lit(1)
    ndim = site.ndim(x)
    order = [d + ndim if d < 0 else d for d in dims]
    return Result(lay.moved(order.index(lay.dim)))


def transpose(site: Site) -> Result:
    x = site.arg(0)
    lay = site.layout(x)
    ndim = site.ndim(x)
    a, b = ((d + ndim if d < 0 else d) for d in (site.lit(1, 0), site.lit(2, 1)))
    return Result(lay.moved(b if lay.dim == a else a if lay.dim == b else lay.dim))


def reverse_dims(site: Site) -> Result:
    """``x.T``: dim ``d`` becomes ``ndim - 1 - d``."""
    lay = site.layout(site.arg(0))
    return Result(lay.moved(site.ndim(site.arg(0)) - 1 - lay.dim))


def matrix_transpose(site: Site) -> Result:
    """``x.mT``: the last two dims swap."""
    lay = site.layout(site.arg(0))
    last = site.ndim(site.arg(0)) - 1
    return Result(lay.moved(last - 1 if lay.dim == last else last if lay.dim == last - 1 else lay.dim))


def movedim(site: Site) -> Result:
    """``movedim(x, source, destination)``: the dims in ``source`` go to ``destination``, the
    others keep their order in the remaining places (as ``torch.movedim`` defines it)."""
    x = site.arg(0)
    lay, ndim = site.layout(x), site.ndim(x)
    source, destination = _dims(site.lit(1), ndim), site.lit(2)
    destination = [destination] if isinstance(destination, int) else list(destination)
    order_src = [d + ndim if d < 0 else d for d in ([site.lit(1)] if isinstance(site.lit(1), int) else site.lit(1))]
    order_dst = [d + ndim if d < 0 else d for d in destination]
    if source is None or len(order_src) != len(order_dst):
        return _private("its dims could not be read")
    order: list[int | None] = [None] * ndim
    for src, dst in zip(order_src, order_dst):
        order[dst] = src
    rest = iter(d for d in range(ndim) if d not in source)
    order = [d if d is not None else next(rest) for d in order]
    return Result(lay.moved(order.index(lay.dim)))


def select(site: Site) -> Result:
    """``select``/``unbind`` over another dim drop it; over the batch's dim they pick samples."""
    x = site.arg(0)
    lay = site.layout(x)
    dim = _dims(site.lit(1, 0), site.ndim(x))
    if dim is None or lay.dim in dim:
        return _private("it picks samples out of the batch")
    moved = lay.moved(lay.dim - (min(dim) < lay.dim))
    return Result(_per_output(site, moved) if site.out.parts is None else tuple(moved for _ in site.out.parts))


def along_keep(dim_position: int, default: Any = 0) -> Check:
    """Slicing, narrowing, splitting, concatenating along a dim other than the batch's."""
    def check(site: Site) -> Result:
        rows = site.rows_args()
        layouts = {lay for _, _, lay in rows}
        if len(layouts) != 1:
            return _private("its inputs hold the batch in different places")
        lay = layouts.pop()
        first = rows[0][1]
        dims = _dims(site.lit(dim_position, default), site.ndim(first))
        if dims is None or lay.dim in dims:
            return _private("it slices, splits or joins along the batch's dim")
        if site.out.parts is not None:
            return Result(tuple(lay for _ in site.out.parts))
        return Result(lay)
    return check


def slice_rule(site: Site) -> Result:
    """``slice(x, dim, start, end, step)``: along another dim, or the whole batch."""
    x = site.arg(0)
    lay = site.layout(x)
    dim = _dims(site.lit(1, 0), site.ndim(x))
    if dim is not None and lay.dim not in dim:
        return Result(lay)
    start, end, step = site.lit(2), site.lit(3), site.lit(4, 1)
    if start in (None, 0) and step == 1 and isinstance(end, int) and end >= 2**62:
        return Result(lay)
    return _private("it slices the batch's dim")


def scatter_along(site: Site) -> Result:
    """``slice_scatter``/``select_scatter(x, src, dim, ...)``: writes ``src`` into a slice of a dim
    other than the batch's; functionalization makes them of in-place writes to views."""
    x, src = site.arg(0), site.arg(1)
    lay, src_lay = site.layout(x), site.layout(src)
    dims = _dims(site.lit(2, 0), site.ndim(x))
    whole = site.lit(3) in (None, 0) and isinstance(site.lit(4), int) and site.lit(4) >= 2**62 and site.lit(5, 1) == 1
    if str(site.node.target).startswith("aten.slice_scatter") and whole and lay == src_lay:
        return Result(lay)  # the whole of every dim: a copy of src
    if not isinstance(lay, Layout) or dims is None or lay.dim in dims:
        return _private("it writes along the batch's dim, or into a tensor without rows")
    expected = lay.moved(lay.dim - (site.ndim(src) < site.ndim(x) and min(dims) < lay.dim))
    if src_lay != expected:
        return _private("the rows it writes do not line up with the rows it writes into")
    return Result(lay)


def stack(site: Site) -> Result:
    rows = site.rows_args()
    layouts = {lay for _, _, lay in rows}
    tensors = site.arg(0)
    if len(layouts) != 1 or len(rows) != len(tensors):
        return _private("it stacks tensors that do not all hold the batch in one place")
    lay = layouts.pop()
    dim = site.lit(1, 0)
    dim = dim + site.out.value.dim() if dim < 0 else dim
    return Result(lay.moved(lay.dim + (dim <= lay.dim)))


def padding(site: Site) -> Result:
    """``constant_pad_nd(x, pad, value)`` and friends pad the last ``len(pad) // 2`` dims."""
    x = site.arg(0)
    lay = site.layout(x)
    pad = site.lit(1)
    if BATCH_VALUE in pytree.tree_leaves(pad) or lay.dim >= site.ndim(x) - len(pad) // 2:
        return _private("it pads the batch's dim")
    return Result(lay)


def repeat(site: Site) -> Result:
    x = site.arg(0)
    lay = site.layout(x)
    if not isinstance(lay, Layout):
        return Result(_out_layout(site))  # a constant tiled once per sample: every sample alike
    reps = site.lit(1)
    dim = lay.dim + len(reps) - site.ndim(x)
    if BATCH_VALUE in reps or reps[dim] != 1:
        return _private("it repeats the batch's dim")
    return Result(lay.moved(dim))


def matmul(site: Site) -> Result:
    """``matmul(a, b)``: the batch in a broadcast (leading) dim of both, or in ``a``'s rows (or
    ``b``'s columns) against a constant other operand; never in the contracted dim."""
    a, b = site.arg(0), site.arg(1)
    out_ndim = site.out.value.dim()
    placed = set()
    for operand, which in ((a, 0), (b, 1)):
        lay = site.layout(operand)
        if not isinstance(lay, Layout):
            continue
        nd = site.ndim(operand)
        other_rows = isinstance(site.layout(b if which == 0 else a), Layout)
        if nd >= 3 and lay.dim < nd - 2:
            placed.add((lay.dim + out_ndim - nd, lay.outer, lay.inner))
        elif which == 0 and nd >= 2 and lay.dim == nd - 2 and not other_rows:
            placed.add((out_ndim - 2, lay.outer, lay.inner))
        elif which == 1 and nd >= 2 and lay.dim == nd - 1 and not other_rows:
            placed.add((out_ndim - 1, lay.outer, lay.inner))
        else:
            return _private("it contracts or mixes the batch's dim")
    if len(placed) != 1:
        return _private("its operands hold the batch in different dims")
    dim, outer, inner = placed.pop()
    return Result(Layout(dim, outer, inner))


def addmm(site: Site) -> Result:
    """``addmm(bias, a, b)``: rows of ``a`` times a constant ``b``."""
    stray = [n.name for i, n, _ in site.rows_args() if i != 1]
    if stray:
        return _private(f"its arguments {stray} other than the rows depend on the batch")
    lay = site.layout(site.arg(1))
    return Result(lay) if lay.dim == 0 else _private("it contracts the batch's dim")


def attention(site: Site) -> Result:
    """``scaled_dot_product_attention(q, k, v, mask, dropout_p, ...)``: per sample when q, k, v
    (and a mask that carries rows) hold the batch in one leading dim, with no dropout."""
    if site.lit(4, 0.0) not in (0, 0.0):
        return _private("it drops attention weights at random")
    q = site.arg(0)
    nd = site.ndim(q)
    layouts = {(lay.dim + nd - site.ndim(n), lay.outer, lay.inner) for _, n, lay in site.rows_args()}
    positions = {i for i, _, _ in site.rows_args()}
    if len(layouts) != 1 or not {0, 1, 2} <= positions:
        return _private("its query, key and value do not all hold the batch in one dim")
    dim, outer, inner = layouts.pop()
    if dim >= nd - 2:
        return _private("the batch is in a dim it attends over")
    return Result(Layout(dim, outer, inner))


FILLED_OPS = frozenset(("zeros", "ones", "full", "new_zeros", "new_ones", "new_full",
                        "zeros_like", "ones_like", "full_like"))
"""Fills whose every element is one known value (not ``empty``: its contents are whatever
memory held, so they differ from run to run anyway)."""


def _alike_rows(site: Site, node: fx.Node) -> bool:
    """Whether ``node`` is a shared fill of one value: every index of its batch's dim holds the
    same elements, so any layout of the same size describes it, and any narrow or concatenation
    of its rows (whatever layout the gather uses) is again that fill at the new size."""
    return site.verdicts[node].role is Role.SHARED and op_name(node) in FILLED_OPS


def rnn(hidden_is_list: bool) -> Check:
    """``lstm/gru.input(x, hx, params, has_biases, layers, dropout, train, bidirectional,
    batch_first)``: an RNN runs each index of x's batch dim (0 with batch_first, else 1) with
    index ``j`` of its states' dim 1 through the same recurrence, on its own.

    So it is separable when x holds the batch in that dim with any fold (``outer``, ``inner``:
    sequencer runs an LSTM over ``x.reshape(B * H, W, C)``), every state holds it in dim 1 with
    the same fold (index ``j`` of the state then belongs to the sample that index ``j`` of x
    belongs to), and no dropout runs; the outputs keep x's fold. A state that is a fill of one
    value (``torch.zeros(layers, x.size(0), hidden)``, or the zeros ``nn.LSTM`` makes when given
    no state) may carry another fold: the fill rule can only say ``outer=1``, but all its rows
    are alike, so pairing them with x's rows in x's fold gives the same result. Only the ``.input``
    overloads: ``.data`` takes packed sequences, whose rows are interleaved by time step.
    """
    def check(site: Site) -> Result:
        if site.node.target._overloadname != "input":
            return _private("it runs packed sequences, whose samples are interleaved by time step")
        if site.lit(6) is not False and site.lit(5) not in (0, 0.0):
            return _private("it applies dropout between layers in training mode")
        x_dim = 0 if site.lit(8) else 1
        lay = site.layout(site.arg(0))
        if not isinstance(lay, Layout) or lay.dim != x_dim:
            return _private(f"its input holds the batch as {lay}, not in dim {x_dim} where the RNN reads it")
        for h in _nodes_in(site.arg(1)):
            state = site.layout(h)
            fits = isinstance(state, Layout) and state.dim == 1 and (
                state.outer == lay.outer and state.inner == lay.inner
                or state.outer * state.inner == lay.outer * lay.inner and _alike_rows(site, h))
            if not fits:
                return _private(f"its hidden state {h.name} does not hold the batch in dim 1 as its input does")
        stray = [n.name for i, n, _ in site.rows_args() if i not in (0, 1)]
        if stray:
            return _private(f"its weights {stray} depend on the batch")
        return Result((lay, *([lay.moved(1)] * (2 if hidden_is_list else 1))))
    return check


def _einsum_terms(equation: str, ndims: list[int]) -> tuple[list[list[Any]], list[Any]] | None:
    """The label of every dim of each operand and of the output of an einsum, or None if the
    equation cannot be read. Letters label themselves; the dims an ellipsis covers are labelled
    by their position in the broadcast ellipsis (ints, right-aligned, as einsum broadcasts them).
    Without ``->`` the output is the ellipsis dims, then the letters that appear exactly once,
    in alphabetical order (uppercase first), as ``torch.einsum`` defines it."""
    equation = "".join(equation.split())
    lhs, arrow, rhs = equation.partition("->")
    parts = lhs.split(",")
    if len(parts) != len(ndims):
        return None
    letters = [p.replace("...", "") for p in parts]
    if not all(t.isalpha() and t.isascii() for t in letters + [rhs.replace("...", "")] if t):
        return None
    widths = [nd - len(t) if "..." in p else 0 for p, t, nd in zip(parts, letters, ndims)]
    if any(p.count("...") > 1 or w < 0 or ("..." not in p and len(p) != nd)
           for p, w, nd in zip(parts, widths, ndims)):
        return None
    ell = max(widths, default=0)

    def expand(term: str, width: int) -> list[Any]:
        if "..." not in term:
            return list(term)
        before, _, after = term.partition("...")
        return [*before, *range(ell - width, ell), *after]

    terms = [expand(p, w) for p, w in zip(parts, widths)]
    if arrow:
        if rhs.count("...") > 1:
            return None
        return terms, expand(rhs, ell)
    counts = [label for t in letters for label in t]
    return terms, [*range(ell), *sorted(c for c in set(counts) if counts.count(c) == 1)]


def einsum(site: Site) -> Result:
    """``einsum(equation, tensors)``: output element ``o`` is a sum of products of the operands'
    elements whose labels agree with ``o``'s. If every operand with rows holds the batch in a dim
    of one label ``L`` with one fold, ``L`` labels no other dim of it and no operand without
    rows, and ``L`` is in the output (not summed over), then the output's slice ``L = l`` reads
    only the operands' slices ``L = l`` and constants: the sample that index ``l`` belongs to in
    the inputs owns index ``l`` of the output's ``L`` dim, in the same fold. Otherwise the sum or
    a diagonal runs across samples, or a constant operand is indexed by the batch, and the op is
    private."""
    operands = site.arg(1)
    equation = site.lit(0)
    if not isinstance(equation, str) or not all(isinstance(n, fx.Node) for n in operands):
        return _private("its equation or operands are not plain values")
    parsed = _einsum_terms(equation, [site.ndim(n) for n in operands])
    if parsed is None:
        return _private(f"its equation {equation!r} could not be read")
    terms, output = parsed
    layouts = [site.layout(n) for n in operands]
    placed = {(term[lay.dim], lay.outer, lay.inner) for term, lay in zip(terms, layouts) if isinstance(lay, Layout)}
    if len(placed) != 1:
        return _private("its operands hold the batch under different labels or folds")
    label, outer, inner = placed.pop()
    for term, lay in zip(terms, layouts):
        if term.count(label) > (1 if isinstance(lay, Layout) else 0):
            return _private(f"the batch's label {label!r} indexes another dim or an operand without rows")
    if label not in output:
        return _private("it sums over the batch's dim")
    return Result(Layout(output.index(label), outer, inner))


def repeat_interleave(site: Site) -> Result:
    """``repeat_interleave(x, repeats, dim, *, output_size)`` (the ``self_int`` and ``self_Tensor``
    overloads): element ``j`` of ``dim`` becomes elements ``j * k .. j * k + k - 1``.

    Along a dim other than the batch's, each sample's elements are repeated among themselves: the
    layout is kept (``repeats`` must not depend on the batch). Along the batch's dim, with an int
    ``k >= 1``: the dim is ``(outer, batch, inner)`` row-major, so element ``(o, b, i)`` is index
    ``(o * batch + b) * inner + i`` and lands at ``(o * batch + b) * inner * k + i * k + r`` for
    ``r < k``, which is ``(o, b, i * k + r)`` in ``(outer, batch, inner * k)``: each sample keeps
    its own elements and the output is ``Layout(dim, outer, inner * k)``. A tensor of repeats along
    the batch (rows repeated unevenly) and ``dim=None`` (a flattened repeat across samples) stay
    private."""
    if site.node.target._overloadname not in ("self_int", "self_Tensor"):
        return _private("it repeats indices, not a tensor's rows")
    x = site.arg(0)
    lay = site.layout(x)
    stray = [n.name for i, n, _ in site.rows_args() if i != 0]
    if stray or not isinstance(lay, Layout):
        return _private(f"its repeats {stray} depend on the batch, or its input has no rows")
    dims = _dims(site.lit(2), site.ndim(x))
    if dims is None:
        return _private("it flattens the input (dim=None), repeating across samples")
    if lay.dim not in dims:
        return Result(lay)
    k = site.lit(1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        return _private("it repeats the batch's rows by a tensor or a size that is not a positive constant")
    return Result(Layout(lay.dim, lay.outer, lay.inner * k))


def embedding(site: Site) -> Result:
    """``embedding(weight, indices)``: the output holds the batch where the indices do."""
    bad = weights_const(1)(site)
    return bad if bad.reason else Result(site.layout(site.arg(1)))


def fill(site: Site) -> Result:
    """Tensors filled with constants: every row alike, so any layout of their batch is right."""
    return Result(_out_layout(site))


def per_fragment(why: str) -> Check:
    """Ops that are not separable but keep each sample's rows in place."""
    def check(site: Site) -> Result:
        first = _first_rows(site)
        return _private(why, _out_layout(site) if first is None else first[1])
    return check


def random_op(site: Site) -> Result:
    return _private("it draws random numbers", None)


def getitem(site: Site) -> Result:
    """An element of a tuple output: its layout is that element's."""
    container, index = site.arg(0), site.arg(1)
    lay = site.layout(container)
    if isinstance(lay, tuple) and not isinstance(lay, Layout) and isinstance(index, int):
        return Result(lay[index]) if lay[index] is not None else Result()
    return _private("it indexes a value that is not a tuple of rows")


# --- the table --------------------------------------------------------------------------------

POINTWISE_OPS = """
abs neg exp exp2 expm1 log log2 log10 log1p sqrt rsqrt sin cos tan tanh sinh cosh asin acos atan
sigmoid logit relu relu6 gelu silu mish elu selu celu leaky_relu hardtanh hardswish hardsigmoid
softplus softshrink hardshrink sign sgn square reciprocal erf erfc erfinv floor ceil round trunc frac
logical_not bitwise_not isnan isinf isfinite nan_to_num
add sub rsub mul div true_divide floor_divide pow remainder fmod maximum minimum fmax fmin atan2
clamp clamp_min clamp_max clip where masked_fill lerp addcmul addcdiv hypot xlogy copysign
lt le gt ge eq ne logical_and logical_or logical_xor bitwise_and bitwise_or bitwise_xor
to _to_copy type_as clone contiguous detach alias lift_fresh_copy copy positive
""".split()

FILL_OPS = "zeros ones full empty".split()
NEW_FILL_OPS = "new_zeros new_ones new_full new_empty".split()
LIKE_FILL_OPS = "zeros_like ones_like full_like empty_like".split()

DIM0_OPS = """
conv1d conv2d conv3d convolution _convolution conv_transpose1d conv_transpose2d conv_transpose3d
max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_bilinear2d upsample_bicubic2d
upsample_linear1d upsample_trilinear3d _upsample_nearest_exact2d _upsample_bilinear2d_aa
prelu _prelu_kernel pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle group_norm instance_norm
_native_batch_norm_legit_no_training reflection_pad1d reflection_pad2d reflection_pad3d
replication_pad1d replication_pad2d replication_pad3d im2col col2im
""".split()

UNBATCHED = {  # name: the input ndim of its unbatched form, whose dim 0 the op reads as channels
    "conv1d": 2, "conv2d": 3, "conv3d": 4, "conv_transpose1d": 2, "conv_transpose2d": 3, "conv_transpose3d": 4,
    "pixel_shuffle": 3, "pixel_unshuffle": 3, "im2col": 3, "col2im": 2,
}

RESHAPE_OPS = "view reshape _unsafe_view unflatten flatten unsqueeze view_as reshape_as".split()

REDUCTIONS = {  # name: (dims position, default dims, keepdim position)
    "sum": (1, None, 2), "mean": (1, None, 2), "amax": (1, (), 2), "amin": (1, (), 2),
    "prod": (1, None, 2), "logsumexp": (1, None, 2), "argmax": (1, None, 2), "argmin": (1, None, 2),
    "all": (1, None, 2), "any": (1, None, 2), "max": (1, None, 2), "min": (1, None, 2),
    "std": (1, None, 3), "var": (1, None, 3), "var_mean": (1, None, 3), "std_mean": (1, None, 3),
    "linalg_vector_norm": (2, None, 3), "norm": (2, None, 3), "median": (1, None, 2), "aminmax": (1, None, 2),
}

ALONG_OPS = {  # name: dims position; keeps each sample's rows even along the batch
    "softmax": 1, "log_softmax": 1, "_softmax": 1, "_log_softmax": 1, "cumsum": 1, "cumprod": 1,
    "logcumsumexp": 1, "flip": 1, "roll": 2, "sort": 1, "topk": 2,
}

DROPOUTS = ("dropout", "native_dropout", "feature_dropout", "alpha_dropout")

CHECKS = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
          "sym_constrain_range_for_size", "_assert"}
"""Runtime checks that export inserts: run per fragment, never shared, never reported."""

RULES: dict[str, Rule] = {
    **{n: Rule(pointwise, "elementwise: output element i reads input elements i") for n in POINTWISE_OPS},
    **{n: Rule(fill, "filled with constants: all rows alike", sizes=(0,)) for n in FILL_OPS},
    **{n: Rule(fill, "filled with constants: all rows alike", sizes=(1,)) for n in NEW_FILL_OPS},
    **{n: Rule(fill, "filled with constants: all rows alike") for n in LIKE_FILL_OPS},
    **{n: Rule(batch_dim_zero, "works within each index of dim 0, where the batch is") for n in DIM0_OPS},
    **{n: Rule(reshape, "a reshape that keeps each sample's elements contiguous", sizes=(1, 2)) for n in RESHAPE_OPS},
    **{n: Rule(along(p, d, k, keeps=False), "reduces dims other than the batch's") for n, (p, d, k) in REDUCTIONS.items()},
    **{n: Rule(along(p), "works along a dim other than the batch's") for n, p in ALONG_OPS.items()},
    "native_group_norm": Rule(batch_dim_zero, "normalises within each sample", sizes=(3,)),
    "embedding": Rule(embedding, "looks up each index on its own"),
    "linear": Rule(linear, "contracts the last dim with constant weights"),
    "batch_norm": Rule(batch_norm, "normalises with running statistics (training=False)"),
    **{n: Rule(training_flag(2), "the identity when train=False") for n in DROPOUTS},
    "layer_norm": Rule(norm_last_dims(1), "normalises the last dims of each sample"),
    "native_layer_norm": Rule(norm_last_dims(1), "normalises the last dims of each sample"),
    "rms_norm": Rule(norm_last_dims(1), "normalises the last dims of each sample"),
    "squeeze": Rule(squeeze, "removes size-1 dims other than the batch's"),
    "expand": Rule(expand, "broadcasts dims other than the batch's", sizes=(1,)),
    "expand_as": Rule(expand, "broadcasts dims other than the batch's"),
    "permute": Rule(permute, "moves dims; the batch's dim moves with them"),
    "transpose": Rule(transpose, "swaps two dims; the batch's dim moves with them"),
    "swapaxes": Rule(transpose, "swaps two dims; the batch's dim moves with them"),
    "t": Rule(lambda s: Result(s.layout(s.arg(0)).moved(1 - s.layout(s.arg(0)).dim)), "transposes a matrix"),
    "numpy_T": Rule(reverse_dims, "reverses the dims (x.T); the batch's dim moves with them"),
    "mT": Rule(matrix_transpose, "swaps the last two dims; the batch's dim moves with them"),
    "movedim": Rule(movedim, "moves dims; the batch's dim moves with them"),
    "select": Rule(select, "picks along a dim other than the batch's"),
    "unbind": Rule(select, "splits along a dim other than the batch's"),
    "slice": Rule(slice_rule, "slices a dim other than the batch's", sizes=(2, 3)),
    "narrow": Rule(along_keep(1), "narrows a dim other than the batch's"),
    "glu": Rule(along_keep(1, -1), "halves a dim other than the batch's"),
    "split": Rule(along_keep(2), "splits a dim other than the batch's"),
    "split_with_sizes": Rule(along_keep(2), "splits a dim other than the batch's"),
    "chunk": Rule(along_keep(2), "splits a dim other than the batch's"),
    "tensor_split": Rule(along_keep(2), "splits a dim other than the batch's"),
    "cat": Rule(along_keep(1), "joins along a dim other than the batch's"),
    "concat": Rule(along_keep(1), "joins along a dim other than the batch's"),
    "stack": Rule(stack, "stacks samples' tensors in a new dim"),
    "slice_scatter": Rule(scatter_along, "writes into a slice of a dim other than the batch's"),
    "select_scatter": Rule(scatter_along, "writes into an index of a dim other than the batch's"),
    "constant_pad_nd": Rule(padding, "pads dims other than the batch's"),
    "pad": Rule(padding, "pads dims other than the batch's"),
    "repeat": Rule(repeat, "repeats dims other than the batch's", sizes=(1,)),
    "matmul": Rule(matmul, "multiplies within each sample, or rows by a constant"),
    "bmm": Rule(matmul, "multiplies within each sample"),
    "mm": Rule(matmul, "multiplies rows by a constant matrix"),
    "addmm": Rule(addmm, "multiplies rows by a constant matrix"),
    "scaled_dot_product_attention": Rule(attention, "attends within each sample"),
    "einsum": Rule(einsum, "sums products within each index of the batch's label"),
    "repeat_interleave": Rule(repeat_interleave, "repeats elements within each sample", sizes=(3,)),
    "lstm": Rule(rnn(True), "runs each sample's sequence on its own"),
    "gru": Rule(rnn(False), "runs each sample's sequence on its own"),
    "rnn_tanh": Rule(rnn(False), "runs each sample's sequence on its own"),
    "rnn_relu": Rule(rnn(False), "runs each sample's sequence on its own"),
    "getitem": Rule(getitem, "takes one element of a tuple"),
    "arange": Rule(per_fragment("it numbers the samples of the batch"), "", sizes=()),
    **{n: Rule(random_op, "") for n in ("rand", "randn", "rand_like", "randn_like", "randint", "randint_like",
                                       "bernoulli", "multinomial", "normal", "uniform", "randperm")},
}


# --- roles ------------------------------------------------------------------------------------


def op_name(node: fx.Node) -> str | None:
    """The table name of a node's target: the ATen op's name without namespace or overload
    (``getitem`` for ``operator.getitem``); None for anything else."""
    target = node.target
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    if packet is not None and getattr(target, "namespace", None) == "aten":
        return packet.__name__
    return None


def describe(node: fx.Node) -> str:
    name = op_name(node)
    return f"aten.{name}" if name and name != "getitem" else name or getattr(node.target, "__name__", str(node.target))


HIDDEN_UPDATES = {  # op: (flag position, positions it updates in place unless the flag is literally False)
    "batch_norm": (5, (3, 4)),  # training: the running mean and variance
    "instance_norm": (5, (3, 4)),  # use_input_stats: the running mean and variance, where given
}
"""Ops whose schemas do not mark it, but which update some arguments in place at run time."""


def updates(node: fx.Node, verdicts: dict[fx.Node, Verdict]) -> list[fx.Node]:
    """The nodes whose tensors ``node`` updates in place: a write-back's target, or an argument
    that ``HIDDEN_UPDATES`` names. Such a tensor is state, not a constant."""
    if verdicts.get(node, Verdict(Role.PRIVATE)).role is Role.WRITE:
        return [node.args[0]]
    hidden = HIDDEN_UPDATES.get(op_name(node) or "")
    if hidden is None or node.op != "call_function":
        return []
    flag, positions = hidden
    site_args = [node.args[i] if i < len(node.args) else None for i in (flag, *positions)]
    if site_args[0] is False:
        return []
    return [a for a in site_args[1:] if isinstance(a, fx.Node)]


def _impure(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


RANDOM_ONLY_IF = {
    **{name: ("train", None, lambda train: train is not False) for name in DROPOUTS},
    **{name: ("train", None, lambda train: train is not False) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
    "scaled_dot_product_attention": ("dropout_p", 0.0, lambda p: p != 0),
}
"""Ops tagged ``nondeterministic_seeded`` that draw random numbers only for some values of one
argument: op name -> (argument name, default, whether that value draws). Dropout with
``train=False`` is the identity; an RNN in eval mode (``train=False``) applies no dropout between
its layers; attention with ``dropout_p=0`` (every eval-mode transformer) draws nothing."""


def draws_random(node: fx.Node) -> bool:
    """Whether the op draws from the random stream: ATen's ``nondeterministic_seeded`` tag, unless
    `RANDOM_ONLY_IF` says its arguments draw nothing (the argument found by name in the
    overload's schema: overloads place it differently, as ``lstm.input`` and ``lstm.data`` do)."""
    if torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ()):
        return False
    rule = RANDOM_ONLY_IF.get(op_name(node))
    if rule is None:
        return True
    keyword, default, draws = rule
    names = [a.name for a in node.target._schema.arguments]
    if keyword not in names:
        return True
    position = names.index(keyword)
    value = node.args[position] if len(node.args) > position else node.kwargs.get(keyword, default)
    return isinstance(value, fx.Node) or draws(value)


def roles(gm: fx.GraphModule, facts: dict[fx.Node, Facts]) -> dict[fx.Node, Verdict]:
    """The role of every node, decided in graph order from its facts, rule and inputs."""
    verdicts: dict[fx.Node, Verdict] = {}
    for node in gm.graph.nodes:
        if node.op != "output":
            verdicts[node] = _verdict(node, facts, verdicts)
    return verdicts


def _verdict(node: fx.Node, facts: dict[fx.Node, Facts], verdicts: dict[fx.Node, Verdict]) -> Verdict:
    f = facts[node]
    what = describe(node)
    name = op_name(node)
    if node.op == "placeholder":
        return Verdict(Role.INPUT, layout=Layout(0))
    if node.op == "get_attr":
        return Verdict(Role.CONST)
    if name in CHECKS:
        return Verdict(Role.CHECK)
    if node.target is torch.ops.aten.copy_.default and node.args[0].op in ("placeholder", "get_attr"):
        return Verdict(Role.WRITE)  # capture's write-back of an input or buffer mutated in place
    if _impure(node):
        return Verdict(Role.PRIVATE, f"{what}: it mutates a tensor")
    if f.kind is Kind.CONST:
        if draws_random(node):
            return Verdict(Role.PRIVATE, f"{what}: it draws random numbers")
        varying = [a.name for a in node.all_input_nodes if verdicts[a].role not in (Role.CONST, Role.FOLDED)]
        if varying:
            return Verdict(Role.PRIVATE, f"{what}: its input {varying[0]} is not a constant")
        return Verdict(Role.CONST)
    if f.kind is Kind.SCALAR:
        return Verdict(Role.FOLDED)
    unproven = [a for a in node.all_input_nodes if verdicts[a].role in (Role.PRIVATE, Role.CHECK)]
    lost = [a.name for a in unproven if not _per_fragment_value(a, facts, verdicts)]
    if lost or unproven and f.kind is not Kind.ROWS:
        name_ = (lost or [a.name for a in unproven])[0]
        return Verdict(Role.PRIVATE, f"{what}: its input {name_} is private and not proven to carry the batch rows")
    rule = RULES.get(name) if name else None
    if rule is None:
        return Verdict(Role.PRIVATE, f"{what}: not in the batch-separability rule table")
    site = Site(node, facts, verdicts)
    try:
        result = rule.check(site)
    except (AttributeError, TypeError):  # a rule reading a private input as if it held rows
        if not unproven:
            raise
        return Verdict(Role.PRIVATE, f"{what}: its input {unproven[0].name} is private and not proven to carry the batch rows")
    if unproven and result.reason is None:
        result = _private(f"its input {unproven[0].name} is private, so it runs per fragment", result.layout)
    valued = site.batch_valued(rule.sizes)
    if result.reason is None and valued:
        result = _private(f"it uses the batch size as a value (argument {valued[0]})", result.layout)
    if not _agrees(result.layout, f):
        return Verdict(Role.PRIVATE, f"{what}: {result.reason or 'its output does not keep the batch rows'}")
    if result.reason is None:
        return Verdict(Role.SHARED, layout=result.layout)
    role = Role.PRIVATE_ROWS if result.keeps else Role.PRIVATE
    return Verdict(role, f"{what}: {result.reason}", result.layout if result.keeps else None)


def _per_fragment_value(node: fx.Node, facts: dict[fx.Node, Facts], verdicts: dict[fx.Node, Verdict]) -> bool:
    """A private tensor without rows of its own (``h.mean(0)``, ``x[0]``): an op that reads it with
    rows can run per fragment, each fragment's rows with its own value, and keep the rows' layout
    for the shared layers after it (role PRIVATE_ROWS)."""
    f = facts[node]
    return verdicts[node].role is Role.PRIVATE and f.is_tensor and f.kind is not Kind.ROWS and f.pattern is not None


def _agrees(layout: Any, f: Facts) -> bool:
    """Whether a rule's layout is what the symbolic shape says (the cross-check)."""
    if isinstance(layout, Layout):
        return f.kind is Kind.ROWS and f.is_tensor and f.batch_dim == layout.dim and f.factor == layout.outer * layout.inner
    if isinstance(layout, tuple):
        parts = f.parts or ()
        return len(parts) == len(layout) and any(lay is not None for lay in layout) and all(
            (p.kind is not Kind.ROWS) if lay is None else _agrees(lay, p) for lay, p in zip(layout, parts))
    return False
