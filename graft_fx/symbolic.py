"""Sizes derived from the batch, rebuilt as graph arithmetic on a row count.

Capture keeps every batch-derived size symbolic: ``x.shape[0] // 2`` is the sympy expression
``FloorDiv(s, 2)`` of the batch symbol ``s``. A realigned graph and a ``split`` tail must compute
such a value from the rows they actually hold (a row group's count, a tail's own input), never
from the batch the fragment was captured with. ``materialize`` turns an expression into fx nodes
(Python arithmetic on SymInts, which export and torch.compile trace) with ``s`` replaced by a
graph value.
"""

from __future__ import annotations

import math
import operator
from functools import reduce
from typing import Any, Callable

import sympy
import torch.fx as fx
from torch.utils._sympy.functions import (
    CeilDiv, CleanDiv, FloatPow, FloatTrueDiv, FloorDiv, Identity, IntTrueDiv, Max, Min, Mod, PowByNatural, PythonMod,
    RoundToInt, ToFloat, TruncToFloat, TruncToInt,
)

from .errors import GraftError

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    FloorDiv: operator.floordiv, CleanDiv: operator.floordiv, Mod: operator.mod, PythonMod: operator.mod,
    IntTrueDiv: operator.truediv, FloatTrueDiv: operator.truediv, FloatPow: operator.pow, PowByNatural: operator.pow,
}

def trunc_to_float(v: Any) -> float:
    return float(math.trunc(v))


_UNARY: dict[type, Callable[[Any], Any]] = {
    ToFloat: float, TruncToFloat: trunc_to_float, TruncToInt: math.trunc, RoundToInt: round,
    Identity: operator.pos,
}
"""Sympy functions of size arithmetic (``torch.utils._sympy.functions``) -> the Python function
that computes them on SymInts and SymFloats, as export records ``x.shape[0] ** 0.5``."""


def materialize(expr: Any, batch: sympy.Symbol, rows: Any, graph: fx.Graph) -> Any:
    """``expr`` with ``batch`` replaced by ``rows`` (an fx node or an int), as graph nodes.

    Plain values (ints, floats, bools, lists and tuples of them) come back as they are. Raises
    GraftError for an expression it cannot rebuild (it names the expression).
    """
    if isinstance(expr, (list, tuple)):
        return type(expr)(materialize(e, batch, rows, graph) for e in expr)
    if not isinstance(expr, sympy.Basic):
        return expr
    if not expr.free_symbols:
        return int(expr) if expr.is_Integer else bool(expr) if expr.is_Boolean else float(expr)

    def call(fn: Callable, *args: Any) -> Any:
        if not any(isinstance(a, fx.Node) for a in args):
            return fn(*args)
        return graph.call_function(fn, args)

    def build(e: sympy.Basic) -> Any:
        if e == batch:
            return rows
        if not e.free_symbols:
            return int(e) if e.is_Integer else float(e)
        if isinstance(e, sympy.Add):
            return reduce(lambda a, b: call(operator.add, a, b), map(build, e.args))
        if isinstance(e, sympy.Mul):
            return reduce(lambda a, b: call(operator.mul, a, b), map(build, e.args))
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and e.exp > 0:
            return call(operator.pow, build(e.base), int(e.exp))
        if type(e) in _BINARY:
            return call(_BINARY[type(e)], build(e.args[0]), build(e.args[1]))
        if type(e) in _UNARY:
            return call(_UNARY[type(e)], build(e.args[0]))
        if isinstance(e, CeilDiv):
            return call(operator.neg, call(operator.floordiv, call(operator.neg, build(e.args[0])), build(e.args[1])))
        if isinstance(e, (Max, Min)):
            return reduce(lambda a, b: call(max if isinstance(e, Max) else min, a, b), map(build, e.args))
        raise GraftError(f"cannot rebuild the batch-derived size {expr} (its part {e} is not supported)")

    return build(expr)
