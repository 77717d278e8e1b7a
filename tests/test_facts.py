"""Facts from symbolic shapes: rows, constants, sizes, FLOPs."""

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from graft_fx.analysis import analyze
from graft_fx.facts import Kind


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        h = self.fc(x)                      # rows
        w = self.scale * 2                  # constant
        half = x.shape[0] // 2              # a size derived from the batch
        total = h.sum(0)                    # no batch dim left, but reached from the input
        pairs = h.reshape(-1, 2)            # the batch folded into dim 0 twice over
        return h * w, half, total, pairs


def facts_by_target(model, x):
    a = analyze(model, x)
    return a, {str(n.target): a.facts[n] for n in a.nodes}


def test_kinds_follow_the_symbolic_shapes():
    a, f = facts_by_target(Mixed(), torch.randn(2, 6))
    assert f["aten.linear.default"].kind is Kind.ROWS and f["aten.linear.default"].row_shape == (4,)
    assert f["aten.mul.Tensor"].kind is Kind.ROWS
    assert f["aten.sum.dim_IntList"].kind is Kind.OTHER
    reshape = f["aten.reshape.default"]
    assert reshape.kind is Kind.ROWS and reshape.factor == 2 and reshape.pattern == ("2B", 2)
    consts = [a.facts[n] for n in a.nodes if n.op == "get_attr"]
    assert consts and all(c.kind is Kind.CONST for c in consts)


def test_sizes_stay_symbolic():
    a, _ = facts_by_target(Mixed(), torch.randn(2, 6))
    (half,) = [a.facts[n] for n in a.nodes if a.facts[n].kind is Kind.SCALAR and str(n.target) != "aten.sym_size.int"]
    assert half.scalar.subs(a.captured.batch, 7) == 3  # never frozen at the example's 2 // 2 = 1


@pytest.mark.parametrize("layer,shape", [(nn.Conv2d(3, 8, 3), (3, 10, 10)), (nn.Linear(16, 5), (7, 16))])
def test_flops_per_row_match_the_flop_counter(layer, shape):
    a = analyze(layer, torch.randn(2, *shape))
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(1, *shape))
    assert sum(a.facts[n].flops_per_row for n in a.nodes) == counter.get_total_flops()


def test_composite_ops_count_what_they_decompose_into():
    class Einsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 5))

        def forward(self, x):
            return torch.einsum("bij,jk->bik", x, self.w)

    a = analyze(Einsum(), torch.randn(2, 4, 6))
    assert sum(a.facts[n].flops_per_row for n in a.nodes) == 2 * 4 * 6 * 5
