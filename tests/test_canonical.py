"""canonical.py: one spelling per computation, the same values.

Each rewrite is checked on what capture makes of a small module, both as plain export and
through ``run_decompositions`` (forced by an in-place write into a view), and every captured
graph must still compute what the module computes, at batch sizes 0, 1 and 3.
"""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from graft_fx.analysis import analyze
from graft_fx.canonical import RESHAPES
from graft_fx.capture import capture
from graft_fx.separable import Role

aten = torch.ops.aten


class Respelled(nn.Module):
    """Every op canonical.py respells, and (with ``view_write``) a write into a view that makes
    capture functionalize the program through run_decompositions."""

    def __init__(self, view_write: bool):
        super().__init__()
        self.view_write = view_write
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        y = self.fc(x).reshape(x.shape[0], 2, 2).transpose(1, 2).contiguous().flatten(1)
        y = F.dropout(self.bn(y), 0.5, training=False)
        if self.view_write:
            y.view(-1, 2)[:, :1].relu_()
        y = y.view(x.shape[0], 2, 2).reshape(x.shape[0], 4)  # a round trip: y itself
        mask = y.new_zeros((2, 4)) + y.new_full((4,), 3.0)
        return y + mask.sum(0), mask


def module(view_write: bool) -> nn.Module:
    torch.manual_seed(0)
    m = Respelled(view_write).eval()
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def ops(gm) -> collections.Counter:
    return collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_function")


@pytest.fixture(params=[False, True], ids=["plain", "decomposed"])
def view_write(request) -> bool:
    return request.param


def test_both_captures_spell_ops_alike(view_write):
    found = ops(capture(module(view_write), torch.randn(2, 4)).gm)
    assert found[aten.batch_norm.default] == 1
    gone = [aten.view.default, aten._unsafe_view.default, aten.contiguous.default, aten.dropout.default,
            aten._native_batch_norm_legit_no_training.default, aten.new_zeros.default, aten.new_full.default]
    assert not [op for op in gone if found[op]], found
    assert found[aten.clone.default] == 1 and found[aten.zeros.default] == found[aten.full.default] == 1


def _chain_source(node):
    while node.target in RESHAPES:
        node = node.args[0]
    return node


def test_no_reshape_makes_a_round_trip(view_write):
    gm = capture(module(view_write), torch.randn(2, 4)).gm
    reshapes = [n for n in gm.graph.nodes if n.target in RESHAPES]
    assert not [n.name for n in reshapes if _chain_source(n).meta["val"].shape == n.meta["val"].shape]
    if not view_write:  # fc's output to [B, 2, 2], and the transpose's back to [B, 4]; the round trip is gone
        assert len(reshapes) == 2, gm.graph


def test_filled_constants_do_not_depend_on_the_input(view_write):
    a = analyze(module(view_write), torch.randn(2, 4))
    fills = [n for n in a.nodes if n.target in (aten.zeros.default, aten.full.default)]
    assert fills and all(a.verdicts[n].role is Role.CONST for n in fills)
    assert all(n.kwargs["dtype"] == torch.float32 and n.kwargs["device"] == torch.device("cpu") for n in fills)


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_the_captured_graph_computes_what_the_module_does(view_write, rows):
    m = module(view_write)
    gm = capture(m, torch.randn(2, 4)).gm
    x = torch.randn(rows, 4)
    with torch.no_grad():
        expected = m(x.clone())
        got = gm(x.clone())
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


class Effects(nn.Module):
    """Dead code next to what must stay: a training-mode dropout and a random draw nobody reads
    (both consume the random stream), and an in-place write to the input."""

    def forward(self, x):
        unused = (x * 3).sum(1)  # noqa: F841 - dead: must go (no view of x: a view would send
        # the program through run_decompositions, whose own dead-code pass drops the random draw)
        torch.rand(3)  # dead, but random: must stay, or the dropout below draws other numbers
        x.mul_(2)
        return F.dropout(x, 0.5, training=True)


def test_dead_code_goes_but_effects_stay():
    found = ops(capture(Effects(), torch.randn(2, 4)).gm)
    assert found[aten.mul.Tensor] == 1 and not found[aten.sum.dim_IntList]  # mul_ made functional; x * 3 gone
    assert found[aten.rand.default] == 1 and found[aten.dropout.default] == 1 and found[aten.copy_.default] == 1


class WriteThroughViews(nn.Module):
    """relu in place on a slice of a flattened slice: functionalization scatters the result back
    through both views and slices it out again."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        v = torch.flatten(x[:, :2], 1)[:, :10]
        torch.relu_(v)
        return self.fc(v) + v


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_view_replays_are_cut_short_and_values_kept(rows):
    m = WriteThroughViews()
    gm = capture(m, torch.randn(2, 4, 5)).gm
    relu = next(n for n in gm.graph.nodes if n.target is aten.relu.default)
    readers = {u.target for u in relu.users}
    assert aten.linear.default in readers and aten.add.Tensor in readers, gm.graph  # no slice of a scatter
    assert not [n for n in gm.graph.nodes if n.target is aten.slice.Tensor and n.args[0].target is aten.slice_scatter.default]
    x = torch.randn(rows, 4, 5)
    mine, theirs = x.clone(), x.clone()
    with torch.no_grad():
        torch.testing.assert_close(gm(mine)[0], m(theirs))
    torch.testing.assert_close(mine, theirs)  # the input is written as eager writes it
