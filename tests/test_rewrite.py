"""The emitted graph: one gather per junction, views for outputs, row counts for batch sizes."""

import torch
import torch.nn as nn

import graft_fx
from graft_fx.rows import ROWS, cat_rows, take_rows
from models import example, fragments, seeded, realign_all


def count(gm, target):
    return sum(n.target is target or n.target == target for n in gm.graph.nodes)


def test_one_gather_per_junction():
    heads, tails = fragments(seeded(), [0, 3, 6])
    rm = realign_all(tails)
    assert count(rm.graph_module, torch.cat) == 2
    assert rm.graph_for(frozenset({0})).graph.find_nodes(op="call_function", target=torch.cat) == []


def test_outputs_are_views_of_the_shared_result():
    heads, tails = fragments(seeded(), [2, 2])
    rm = realign_all(tails)
    x = heads[0](example(3))
    with torch.no_grad():
        a, b = rm(x, x[:2])
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    torch.testing.assert_close(a[:2], b)


def test_batch_sizes_become_row_counts_of_the_consumer():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 4)
            self.token = nn.Parameter(torch.randn(1, 1, 4))
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            n = x.shape[0]
            y = self.proj(x).reshape(n, 3, 4)
            y = torch.cat([self.token.expand(n, -1, -1), y], dim=1)
            return self.out(y[:, 0] + y.mean(1))

    torch.manual_seed(0)
    model = Tokens().eval()
    cuts = graft_fx.cut_points(model, torch.randn(2, 3, 6))
    pairs = [graft_fx.split(model, c, torch.randn(2, 3, 6)) for c in cuts[:3]]
    rm = realign_all([t for _, t in pairs])
    assert not any(n.target == "shape" or n.args[1:] == ("shape",) for n in rm.graph_module.graph.nodes)
    xs = [h(torch.randn(b, 3, 6)) for (h, _), b in zip(pairs, (1, 3, 2))]
    with torch.no_grad():
        for out, (_, tail), x in zip(rm(*xs), pairs, xs):
            torch.testing.assert_close(out, tail(x))


def test_row_helpers_walk_nested_values():
    a = (torch.arange(6).reshape(3, 2), None)
    b = (torch.arange(4).reshape(2, 2) + 10, None)
    joined = cat_rows((ROWS, None), a, b)
    assert joined[1] is None and joined[0].shape == (5, 2)
    part = take_rows(joined, (ROWS, None), 3, 2)
    assert torch.equal(part[0], b[0]) and part[1] is None
