"""Batch-derived sizes rebuilt as graph arithmetic on a row count."""

import sympy
import torch.fx as fx
import pytest
from torch.utils._sympy.functions import FloatPow, FloatTrueDiv, FloorDiv, Mod, ToFloat, TruncToInt

from graft_fx import GraftError
from graft_fx.symbolic import materialize

s = sympy.Symbol("s0", integer=True, positive=True)


@pytest.mark.parametrize("expr", [s, 3 * s, s + 1, FloorDiv(s, 2) * 2 + Mod(s, 2), s**2 - 1])
def test_expressions_evaluate_like_sympy(expr):
    graph = fx.Graph()
    rows = graph.placeholder("rows")
    graph.output(materialize(expr, s, rows, graph))
    gm = fx.GraphModule({}, graph)
    for n in (0, 1, 2, 7):
        assert gm(n) == int(expr.subs(s, n))


@pytest.mark.parametrize("expr, value", [
    (FloatPow(ToFloat(s), 0.5), lambda n: float(n) ** 0.5),  # x.shape[0] ** 0.5, as export records it
    (FloatTrueDiv(ToFloat(s), 4.0), lambda n: n / 4.0),
    (TruncToInt(FloatTrueDiv(ToFloat(s), 2.0)), lambda n: int(n / 2.0)),
])
def test_float_size_arithmetic_evaluates_like_python(expr, value):
    graph = fx.Graph()
    rows = graph.placeholder("rows")
    graph.output(materialize(expr, s, rows, graph))
    gm = fx.GraphModule({}, graph)
    for n in (0, 1, 2, 7):
        assert gm(n) == value(n)


def test_plain_values_come_back_as_they_are():
    graph = fx.Graph()
    assert materialize((1, [2.5, True]), s, None, graph) == (1, [2.5, True])
    assert materialize(sympy.Integer(4), s, None, graph) == 4


def test_unsupported_expressions_are_named():
    with pytest.raises(GraftError, match="cannot rebuild"):
        materialize(sympy.sin(s), s, fx.Graph().placeholder("rows"), fx.Graph())
