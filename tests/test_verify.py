"""The guard: realign(verify=True) catches what the analysis got wrong, and names where."""

import pytest
import torch
import torch.nn as nn

import graft_fx
from graft_fx import separable
from graft_fx.separable import Result, Rule
from graft_fx.verify import assert_close, assert_equivalent, finite_scale, random_rows
from models import realign_all


class Reversed(nn.Module):
    """Reverses the batch: it keeps the batch's shape, so only the rule table can tell."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).flip(0).relu()


WRONG = Rule(lambda site: Result(site.layout(site.arg(0))), "a deliberately wrong rule")


def test_a_wrong_rule_is_caught_and_the_node_named(monkeypatch):
    monkeypatch.setitem(separable.RULES, "flip", WRONG)
    model = Reversed().eval()
    with pytest.raises(graft_fx.GraftError, match=r"fragment \d.*first differing node: .*flip"):
        realign_all([model, model], [torch.randn(2, 4)] * 2)


def test_the_shape_cross_check_catches_a_wrong_rule_first(monkeypatch):
    """A rule that calls a reduction over the batch separable disagrees with the output's shape."""
    monkeypatch.setitem(separable.RULES, "mean", WRONG)

    class Centered(nn.Module):
        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    rm = realign_all([Centered(), Centered()], [torch.randn(2, 4)] * 2)
    assert any("mean" in u.reason for u in rm.plan.unshared)


def test_correct_realignment_passes_and_leaves_inputs_alone():
    model = Reversed().eval()
    rm = realign_all([model, model], [torch.randn(2, 4)] * 2)
    x, y = torch.randn(1, 4), torch.randn(3, 4)
    before = (x.clone(), y.clone())
    assert_equivalent(rm, [x, y])
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


def test_verify_can_be_skipped(monkeypatch):
    monkeypatch.setitem(separable.RULES, "flip", WRONG)
    model = Reversed().eval()
    realign_all([model, model], [torch.randn(2, 4)] * 2, verify=False)  # no error: the guard is off


def test_random_rows_match_the_spec():
    spec = graft_fx.InputSpec((3, 2), torch.int64)
    rows = random_rows(spec, 4, torch.Generator().manual_seed(0))
    assert rows.shape == (4, 3, 2) and rows.dtype == torch.int64 and rows.min() >= 0


class Attends(nn.Module):
    """Self-attention through SDPA, whose ATen op is tagged as drawing random numbers."""

    def __init__(self, dropout_p: float = 0.0):
        super().__init__()
        self.fc, self.dropout_p = nn.Linear(4, 4), dropout_p

    def forward(self, x):
        q = self.fc(x)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=self.dropout_p).flip(0)


def test_attention_without_dropout_is_compared_not_skipped(monkeypatch):
    """Found by review: SDPA's random tag made the guard skip every transformer. With
    dropout_p=0 it draws nothing, so a wrong rule after it is caught; with dropout it is not
    compared (and warned about)."""
    monkeypatch.setitem(separable.RULES, "flip", WRONG)
    with pytest.raises(graft_fx.GraftError, match="first differing node"):
        realign_all([Attends(), Attends()], [torch.randn(2, 3, 4)] * 2)
    with pytest.warns(UserWarning, match="random"):
        realign_all([Attends(0.5), Attends(0.5)], [torch.randn(2, 3, 4)] * 2)


class Recurs(nn.Module):
    """An LSTM (or GRU) whose ATen op is tagged as drawing random numbers for its dropout."""

    def __init__(self, cell=nn.LSTM, dropout: float = 0.0):
        super().__init__()
        self.rnn = cell(4, 4, num_layers=2, dropout=dropout, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0].flip(0)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_eval_mode_recurrent_layers_are_compared_not_skipped(monkeypatch, cell):
    """Found by review: lstm/gru/rnn carry the random tag for their dropout, so the guard skipped
    (and padding refused) every RNN fragment. In eval mode they draw nothing and are compared;
    in training mode with dropout they are not (and warned about)."""
    monkeypatch.setitem(separable.RULES, "flip", WRONG)
    with pytest.raises(graft_fx.GraftError, match="first differing node"):
        realign_all([Recurs(cell).eval(), Recurs(cell).eval()], [torch.randn(2, 3, 4)] * 2)
    with pytest.warns(UserWarning, match="random"):
        realign_all([Recurs(cell, 0.5).train(), Recurs(cell, 0.5).train()], [torch.randn(2, 3, 4)] * 2)


NAN, INF = float("nan"), float("inf")


class LogTail(nn.Module):
    """A tail whose output holds NaN wherever the linear layer's output is negative."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x).log()


def test_nan_outputs_are_verified_and_match_separate_runs_at_every_batch_size():
    """Found by review: the tolerance slack came from abs().max(), which is NaN here, and
    torch.testing raised RuntimeError instead of comparing."""
    torch.manual_seed(0)
    model = LogTail().eval()
    rm = realign_all([model, model], [torch.randn(2, 8)] * 2)
    for rows in [(0, 1), (1, 0), (1, 1), (3, 2)]:
        xs = [torch.randn(n, 8) for n in rows]
        outs = rm(*xs)
        for x, out in zip(xs, outs):
            torch.testing.assert_close(out, model(x), equal_nan=True)
        assert_equivalent(rm, xs)
    assert outs[0].isnan().any() and not outs[0].isnan().all()  # the check met NaN and numbers


def test_a_wrong_rule_is_still_caught_when_outputs_hold_nan(monkeypatch):
    class FlipLog(LogTail):
        def forward(self, x):
            return super().forward(x).flip(0)

    monkeypatch.setitem(separable.RULES, "flip", WRONG)
    torch.manual_seed(0)
    model = FlipLog().eval()
    with pytest.raises(graft_fx.GraftError, match="first differing node: .*flip"):
        realign_all([model, model], [torch.randn(2, 8)] * 2)


def test_assert_close_takes_nan_in_the_same_place_as_equal():
    e = torch.tensor([NAN, 1.0, INF, -INF])
    assert_close(e.clone(), e)
    assert_close(e.clone(), e, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("actual, expected", [([NAN, 1.0], [0.5, 1.0]), ([0.5, 1.0], [NAN, 1.0]),
                                              ([0.5, INF], [0.5, 1.0]), ([0.5, -INF], [0.5, INF])],
                         ids=["nan-for-number", "number-for-nan", "inf-for-number", "inf-sign"])
def test_assert_close_takes_nan_or_inf_against_a_number_as_a_difference(actual, expected):
    with pytest.raises(AssertionError):
        assert_close(torch.tensor(actual), torch.tensor(expected))


def test_the_slack_comes_from_finite_magnitudes_only():
    """An inf (or NaN) beside small numbers must not widen the tolerance: 1.0 against 1.1 stays a
    difference, and an all-NaN output gives no slack at all."""
    assert finite_scale(torch.tensor([INF, NAN, -3.0, 2.0])) == 3.0
    assert finite_scale(torch.tensor([NAN])) == 0.0
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([INF, 1.1]), torch.tensor([INF, 1.0]))
