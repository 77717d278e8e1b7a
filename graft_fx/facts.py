"""What each value of a captured graph is, read off its symbolic metadata.

Capture (``capture.py``) leaves a fake value with symbolic shapes in every node's
``meta["val"]``: the batch is a sympy symbol ``s`` and every size derived from it is an
expression in ``s`` (``2 * s``, ``s // 2``). So whether a value carries batch rows is a fact of
its shape, not a guess from example runs:

* a tensor with exactly one dim whose size is ``c * s`` (``c`` a positive integer) and every other
  dim a constant is ROWS (where in that dim the rows sit is decided by the rule table, which
  tracks a ``rows.Layout`` from op to op);
* a tensor no input reaches, or one with no elements, is CONST;
* an int, float, bool or other plain value, or a symbolic one whose only free symbol is the
  batch, is SCALAR, and ``scalar`` holds it (a sympy expression where it depends on the batch);
* anything else is OTHER: a tensor with the batch in two dims, a reduction over the batch,
  a size that depends on data.

The same pass counts FLOPs per row: ``torch.utils.flop_counter``'s formulas (at the example's
concrete shapes, divided by its batch) for the ops it knows, and the formulas below for the
composite ops that export's training IR keeps (``linear``, ``conv2d``, ``matmul``,
``scaled_dot_product_attention``). Any other composite op (``einsum``, ``tensordot``,
``bilinear``) runs once on meta tensors under ``FlopCounterMode``, which counts what it
decomposes into. Only matrix products and convolutions count, as in ``FlopCounterMode``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, flop_registry

aten = torch.ops.aten


class Kind(enum.Enum):
    ROWS = "rows"
    CONST = "const"
    SCALAR = "scalar"
    OTHER = "other"


@dataclass(frozen=True)
class Facts:
    """What one node's value is.

    ``value`` is the fake value (symbolic shapes); ``batch_dim`` and ``factor`` say which dim of a
    ROWS tensor holds the batch and how many times the batch its size is; ``pattern`` is the shape
    with that dim written ``"B"`` (or ``"3B"``); ``row_shape`` the shape of one row when the batch
    is dim 0 alone; ``scalar`` the value of a SCALAR (a sympy expression in the batch symbol, or a
    plain literal); ``parts`` the facts of each element of a tuple or list value.
    """

    kind: Kind
    value: Any
    depends_on_input: bool
    batch_dim: int | None = None
    factor: int = 1
    pattern: tuple | None = None
    dtype: torch.dtype | None = None
    scalar: Any = None
    parts: tuple["Facts", ...] | None = None
    flops_per_row: int = 0
    bytes_per_row: int = 0

    @property
    def is_tensor(self) -> bool:
        return isinstance(self.value, torch.Tensor)

    @property
    def row_shape(self) -> tuple[int, ...] | None:
        if self.kind is Kind.ROWS and self.batch_dim == 0 and self.factor == 1 and self.pattern:
            return tuple(self.pattern[1:])
        return None


def expr_of(x: Any) -> Any:
    """The sympy expression of a SymInt/SymFloat/SymBool, or the plain value itself."""
    if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return x.node.expr
    return x


def hint(x: Any) -> Any:
    """The value a symbolic size had in the example export traced (its hint)."""
    if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return x.node.hint
    return x


def _uses_only(expr: Any, batch: sympy.Symbol) -> bool:
    return not isinstance(expr, sympy.Basic) or expr.free_symbols <= {batch}


def _tensor_facts(t: torch.Tensor, depends: bool, batch: sympy.Symbol) -> Facts:
    exprs = [expr_of(d) for d in t.shape]
    batched = [i for i, e in enumerate(exprs) if isinstance(e, sympy.Basic) and e.free_symbols]
    if not batched:
        static = math.prod(int(e) for e in exprs)
        kind = Kind.OTHER if depends and static else Kind.CONST
        return Facts(kind, t, depends, pattern=tuple(int(e) for e in exprs), dtype=t.dtype)
    if len(batched) == 1 and exprs[batched[0]].free_symbols == {batch}:
        d = batched[0]
        factor = sympy.simplify(exprs[d] / batch)
        if factor.is_Integer and factor > 0:
            pattern = tuple("B" if i == d and factor == 1 else f"{factor}B" if i == d else int(e)
                            for i, e in enumerate(exprs))
            per_row = math.prod(int(factor) if i == d else int(e) for i, e in enumerate(exprs))
            return Facts(Kind.ROWS, t, depends, d, int(factor), pattern, t.dtype,
                         bytes_per_row=per_row * t.element_size())
    return Facts(Kind.OTHER, t, depends, dtype=t.dtype)


def describe(value: Any, depends: bool, batch: sympy.Symbol) -> Facts:
    """The Facts of one fake value (see the module docstring)."""
    if isinstance(value, torch.Tensor):
        return _tensor_facts(value, depends, batch)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        parts = tuple(describe(v, depends, batch) for v in value)
        kinds = {p.kind for p in parts}
        kind = (Kind.OTHER if Kind.OTHER in kinds else Kind.ROWS if Kind.ROWS in kinds
                else Kind.CONST if kinds <= {Kind.CONST} else Kind.OTHER)
        return Facts(kind, value, depends, parts=parts, bytes_per_row=sum(p.bytes_per_row for p in parts))
    leaves = pytree.tree_leaves(value)
    if all(_uses_only(expr_of(v), batch) and not isinstance(v, torch.Tensor) for v in leaves):
        scalar = pytree.tree_map(expr_of, value)
        return Facts(Kind.SCALAR, value, depends, scalar=scalar)
    return Facts(Kind.OTHER, value, depends)


# --- FLOPs ------------------------------------------------------------------------------------


def _concrete(x: Any) -> Any:
    """Fake tensors -> their example shapes; symbolic sizes -> their example values."""
    if isinstance(x, torch.Tensor):
        return torch.Size(int(hint(d)) for d in x.shape)
    return hint(x)


def _linear(x, w, b=None, **_):
    return 2 * math.prod(x[:-1]) * w[0] * w[1]


def _conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, out, transposed=False):
    return conv_flop_count(list(x), list(w), list(out), transposed)


def _matmul(a, b, *, out):
    return 2 * math.prod(out) * a[-1]


def _sdpa(q, k, v, *_, **__):
    return 2 * math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


FLOP_FORMULAS = {
    aten.linear: _linear,
    aten.conv1d: _conv, aten.conv2d: _conv, aten.conv3d: _conv,
    aten.conv_transpose1d: lambda *a, out, **k: _conv(*a[:2], out=out, transposed=True),
    aten.conv_transpose2d: lambda *a, out, **k: _conv(*a[:2], out=out, transposed=True),
    aten.conv_transpose3d: lambda *a, out, **k: _conv(*a[:2], out=out, transposed=True),
    aten.matmul: _matmul,
    aten.scaled_dot_product_attention: _sdpa,
}
"""FLOPs of composite ops that export's training IR keeps, over concrete shapes."""


def _composite(op: Any) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")


def _meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty(tuple(int(hint(d)) for d in x.shape), dtype=x.dtype, device="meta")
    return hint(x)


def _counted_on_meta(node: fx.Node) -> int:
    """FLOPs of a composite op, counted in what it decomposes into, on meta tensors."""
    args, kwargs = pytree.tree_map(_meta, fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val")))
    with FlopCounterMode(display=False) as counter:
        node.target(*args, **kwargs)
    return counter.get_total_flops()


def flops(node: fx.Node) -> int:
    """FLOPs of one node at the example's concrete shapes (0 for ops without a formula, and for
    shapes that depend on data, such as ``x[x > 0]``: they have no example value)."""
    packet = getattr(node.target, "overloadpacket", None)
    if packet is None:
        return 0
    try:
        args, kwargs = pytree.tree_map(_concrete, fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val")))
        out = _concrete(node.meta.get("val"))
        if packet in FLOP_FORMULAS:
            return int(FLOP_FORMULAS[packet](*args, out=out, **kwargs))
        if packet in flop_registry:
            return int(flop_registry[packet](*args, out_val=out, **kwargs))
        if _composite(node.target):
            return int(_counted_on_meta(node))
    except Exception:  # noqa: BLE001 - an odd signature costs a FLOP estimate, never a result
        return 0
    return 0


def collect(gm: fx.GraphModule, batch: sympy.Symbol) -> dict[fx.Node, Facts]:
    """Facts for every node of ``gm`` but the output."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    rows = int(hint(placeholders[0].meta["val"].shape[0])) if placeholders else 1
    facts: dict[fx.Node, Facts] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        depends = node.op == "placeholder" or any(facts[a].depends_on_input for a in node.all_input_nodes)
        f = describe(node.meta.get("val"), depends, batch)
        if depends and node.op == "call_function":
            f = Facts(**{**f.__dict__, "flops_per_row": flops(node) // max(rows, 1)})
        facts[node] = f
    return facts
