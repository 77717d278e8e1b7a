"""Batch-derived sizes rebuilt as graph arithmetic on a row count."""

import sympy
import torch.fx as fx
import pytest
from torch.utils._sympy.functions import FloorDiv, Mod

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


def test_plain_values_come_back_as_they_are():
    graph = fx.Graph()
    assert materialize((1, [2.5, True]), s, None, graph) == (1, [2.5, True])
    assert materialize(sympy.Integer(4), s, None, graph) == 4


def test_unsupported_expressions_are_named():
    with pytest.raises(GraftError, match="cannot rebuild"):
        materialize(sympy.sin(s), s, fx.Graph().placeholder("rows"), fx.Graph())
