"""The rule table: which ops are shared, which stay private (and keep their rows), and why."""

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from graft_fx.analysis import analyze
from graft_fx.rows import Layout
from graft_fx.separable import Role


def unknown(x):
    """An ATen op the rule table does not list."""
    return torch.special.bessel_j0(x)


def relu(x):
    """A user function that merely shares its name with torch.relu: capture sees what it runs."""
    return x.flip(0)


fx.wrap("relu")


class Probe(nn.Module):
    """Runs ``op`` on a (batch, 4, 6, 6) input, so the op is the one interesting node."""

    def __init__(self, op, module=None):
        super().__init__()
        self.op = op
        self.m = module if module is not None else nn.Identity()

    def forward(self, x):
        return self.op(self, x)


RUNS = (Role.SHARED, Role.PRIVATE, Role.PRIVATE_ROWS)


def verdict(op, module=None, shape=(4, 6, 6), train=False):
    """The verdict on the last op that runs on rows (not a size, constant or write-back)."""
    probe = Probe(op, module).train(train)
    a = analyze(probe, torch.randn(2, *shape))
    interesting = [n for n in a.nodes if a.verdicts[n].role in RUNS]
    return a.verdicts[interesting[-1]], a


SHARED = {
    "conv": (lambda s, x: s.m(x), nn.Conv2d(4, 4, 3, padding=1)),
    "bn eval": (lambda s, x: s.m(x), nn.BatchNorm2d(4)),
    "relu method": (lambda s, x: x.relu(), None),
    "relu function": (lambda s, x: F.relu(x), None),
    "add constant": (lambda s, x: x + 1.0, None),
    "softmax dim 1": (lambda s, x: torch.softmax(x, 1), None),
    "softmax dim -1": (lambda s, x: x.softmax(-1), None),
    "mean over space": (lambda s, x: x.mean((2, 3)), None),
    "flatten from 1": (lambda s, x: torch.flatten(x, 1), None),
    "flatten module": (lambda s, x: s.m(x), nn.Flatten()),
    "view with batch size": (lambda s, x: x.view(x.size(0), -1), None),
    "reshape with -1 first": (lambda s, x: x.reshape(-1, 4, 36), None),
    "cat on channels": (lambda s, x: torch.cat([x, x], 1), None),
    "permute keeps dim 0": (lambda s, x: x.permute(0, 2, 3, 1), None),
    "transpose inner": (lambda s, x: x.transpose(1, 3), None),
    "slice inner": (lambda s, x: x[:, 1:3], None),
    "unsqueeze inner": (lambda s, x: x.unsqueeze(1), None),
    "max pool": (lambda s, x: s.m(x), nn.MaxPool2d(2)),
    "matmul with weight": (lambda s, x: x @ torch.ones(6, 3), None),
    "batched matmul": (lambda s, x: x @ x.transpose(2, 3), None),
    "flatten everything": (lambda s, x: torch.flatten(x), None),
    "leading size 1": (lambda s, x: x.reshape(1, -1), None),
    "batch moved to dim 1 then linear": (lambda s, x: s.m(x.flatten(2).transpose(0, 1)), nn.Linear(36, 5)),
    "negative dims": (lambda s, x: x.flip(-1, -2).softmax(-3), None),
    "layer norm over the last dims": (lambda s, x: F.layer_norm(x, x.shape[1:]), None),
    "user function named relu, inner dim": (lambda s, x: relu(x.transpose(0, 1)), None),
    "attention": (lambda s, x: F.scaled_dot_product_attention(x, x, x), None),
    "view with a size from the batch": (lambda s, x: x.view(x.shape[0] * 4, 36), None),
    "zeros of the batch size": (lambda s, x: x + torch.zeros(x.size(0), 1, 1, 1), None),
    "in place on a slice": (lambda s, x: x.clone()[:, :2].relu_(), None),
    "a constant tiled per sample": (lambda s, x: x + torch.ones(1, 4, 6, 6).repeat(x.shape[0], 1, 1, 1), None),
}

PRIVATE_KEEPS_ROWS = {
    "bn train": (lambda s, x: s.m(x), nn.BatchNorm2d(4), True),
    "bn eval without running stats": (lambda s, x: s.m(x), nn.BatchNorm2d(4, track_running_stats=False), False),
    "dropout train": (lambda s, x: s.m(x), nn.Dropout(0.5), True),
    "softmax over batch": (lambda s, x: torch.softmax(x, 0), None, False),
    "flip rows": (lambda s, x: x.flip(0), None, False),
    "flip with the batch among varargs": (lambda s, x: x.flip(1, 0), None, False),
    "user function named relu": (lambda s, x: relu(x), None, False),
    "divide by the batch size": (lambda s, x: x / x.shape[0], None, False),
    "fill with the batch size": (lambda s, x: torch.full_like(x, x.size(0)), None, False),
    "layer norm over the batch too": (lambda s, x: F.layer_norm(x, x.size()), None, False),
}

PRIVATE = {
    "reduce over batch": lambda s, x: x.sum(0),
    "reduce over everything": lambda s, x: x.amax(),
    "squeeze without dim": lambda s, x: x.squeeze(),
    "unknown op": lambda s, x: unknown(x),
    "index rows": lambda s, x: x[0],
    "cat on batch": lambda s, x: torch.cat([x, x], 0),
    "matmul across samples": lambda s, x: x.flatten(1).T @ x.flatten(1),
}


@pytest.mark.parametrize("name", SHARED)
def test_separable_ops_are_shared(name):
    op, module = SHARED[name]
    v, _ = verdict(op, module)
    assert v.role is Role.SHARED, v.reason


@pytest.mark.parametrize("name", PRIVATE_KEEPS_ROWS)
def test_row_preserving_ops_stay_private_but_keep_rows(name):
    op, module, train = PRIVATE_KEEPS_ROWS[name]
    v, _ = verdict(op, module, train=train)
    assert v.role is Role.PRIVATE_ROWS
    assert v.reason


@pytest.mark.parametrize("name", PRIVATE)
def test_other_ops_stay_private_with_a_reason(name):
    v, _ = verdict(PRIVATE[name])
    assert v.role is Role.PRIVATE
    assert v.reason


def test_reasons_name_what_was_wrong():
    assert "training" in verdict(lambda s, x: s.m(x), nn.BatchNorm2d(4), train=True)[0].reason
    assert "batch's dim" in verdict(lambda s, x: torch.softmax(x, 0))[0].reason
    assert "rule table" in verdict(lambda s, x: unknown(x))[0].reason
    assert "batch size as a value" in verdict(lambda s, x: x / x.shape[0])[0].reason


def test_downstream_of_an_unknown_op_is_private():
    v, a = verdict(lambda s, x: unknown(x).flatten(1).relu())
    assert v.role is Role.PRIVATE
    assert "not proven to carry the batch rows" in v.reason


def test_downstream_of_a_row_preserving_op_is_shared_again():
    v, _ = verdict(lambda s, x: torch.softmax(x, 0).relu())
    assert v.role is Role.SHARED


def test_sizes_are_folded_and_batch_sources_shared():
    class Token(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x):
            n = x.shape[0]
            return torch.cat([self.token.expand(n, -1, -1), x], dim=1)

    a = analyze(Token(), torch.randn(2, 5, 8))
    roles = {str(n.target): a.verdicts[n].role for n in a.nodes}
    assert roles["aten.sym_size.int"] is Role.FOLDED
    assert roles["token"] is Role.CONST
    assert roles["aten.expand.default"] is Role.SHARED and roles["aten.cat.default"] is Role.SHARED


def test_batch_dims_are_tracked_through_moves_and_folds():
    """The batch moves to dim 1 and is folded with the heads, as attention does it."""
    v, _ = verdict(lambda s, x: x.flatten(2).transpose(0, 1).reshape(4, -1, 6).transpose(0, 1))
    assert v.role is Role.SHARED and v.layout == Layout(0, 1, 6)


def test_multihead_attention_is_shared_only_with_batch_first():
    def attention(batch_first):
        a = analyze(Probe(lambda s, x: s.m(x, x, x, need_weights=False)[0],
                          nn.MultiheadAttention(6, 2, batch_first=batch_first)).eval(), torch.randn(2, 5, 6))
        return [a.verdicts[n] for n in a.nodes if a.verdicts[n].role in RUNS]

    assert all(v.role is Role.SHARED for v in attention(True))
    private = [v for v in attention(False) if v.role is not Role.SHARED]
    assert private and all(v.reason for v in private)


def test_lstm_with_batch_first_is_shared():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 5, batch_first=True)

        def forward(self, x):
            h = torch.zeros(1, x.size(0), 5)
            return self.lstm(x, (h, h))[0]

    a = analyze(Recurrent().eval(), torch.randn(2, 4, 6))
    (lstm,) = [n for n in a.nodes if str(n.target) == "aten.lstm.input"]
    assert a.verdicts[lstm].role is Role.SHARED
