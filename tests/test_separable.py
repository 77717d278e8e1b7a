"""The rule table: which ops are shared, which stay private (and keep their rows), and why."""

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import graft_fx.testing
from graft_fx.analysis import analyze
from graft_fx.rows import Layout, take_rows
from graft_fx.separable import Role, op_name
from models import realign_all


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


# --- folded batches, unfold/fold, einsum, repeat_interleave, RNNs on folded batches -------------


def op_verdict(op, name, module=None, shape=(4, 6, 6)):
    """The verdict on the last node of ATen op ``name`` (overload packet) in ``op``'s graph."""
    probe = Probe(op, module).eval()
    a = analyze(probe, torch.randn(2, *shape))
    (*_, node) = [n for n in a.nodes if op_name(n) == name]
    return a.verdicts[node]


def inner4(x):
    """(B, 4, 6, 6) -> (4B, 6, 6): sample b owns rows 4b .. 4b + 3, ``Layout(0, inner=4)``."""
    return x.flatten(0, 1)


def outer4(x):
    """(B, 4, 6, 6) -> (4B, 6, 6): channel c of sample b is row c * B + b, ``Layout(0, outer=4)``."""
    return x.transpose(0, 1).flatten(0, 1)


def outer2_inner2(x):
    """(B, 4, 6, 6) -> (4B, 36): ``Layout(0, outer=2, inner=2)``, row (o * B + b) * 2 + i."""
    return x.reshape(x.shape[0], 2, 2, 36).transpose(0, 1).flatten(0, 2)


FOLDED = Layout(0, 1, 4)
OUTER = Layout(0, 4, 1)

LAYOUTS = {  # name: (op, module, ATen op, the layout of its output)
    "conv on a folded batch": (lambda s, x: s.m(inner4(x)), nn.Conv1d(6, 3, 3), "conv1d", FOLDED),
    "conv on an outer fold": (lambda s, x: s.m(outer4(x)), nn.Conv1d(6, 3, 3), "conv1d", OUTER),
    "eval batch norm on a folded batch": (lambda s, x: s.m(inner4(x)), nn.BatchNorm1d(6), "batch_norm", FOLDED),
    "group norm on an outer fold": (lambda s, x: s.m(outer4(x)), nn.GroupNorm(2, 6), "group_norm", OUTER),
    "pooling on a folded batch": (lambda s, x: F.max_pool1d(inner4(x), 2), None, "max_pool1d", FOLDED),
    "reflection pad on an outer fold": (lambda s, x: F.pad(outer4(x), (1, 1), mode="reflect"), None,
                                        "pad", OUTER),
    "upsample on a folded batch": (lambda s, x: F.interpolate(inner4(x).unsqueeze(1), scale_factor=2.0), None,
                                   "upsample_nearest2d", FOLDED),
    "unfold": (lambda s, x: F.unfold(x, 3, padding=1), None, "im2col", Layout(0)),
    "unfold on a folded batch": (lambda s, x: F.unfold(inner4(x).unsqueeze(1), 3), None, "im2col", FOLDED),
    "fold on an outer fold": (lambda s, x: F.fold(F.unfold(outer4(x).unsqueeze(1), 3, padding=1), (6, 6), 3,
                                                  padding=1), None, "col2im", OUTER),
    "einsum with a constant": (lambda s, x: torch.einsum("bchw,wv->bvhc", x, torch.ones(6, 5)), None, "einsum",
                               Layout(0)),
    "einsum within each sample": (lambda s, x: torch.einsum("bchw,bdhw->cbd", x, x), None, "einsum", Layout(1)),
    "einsum with spaces and an ellipsis": (lambda s, x: torch.einsum("... h w , w v -> ... v h", x, torch.ones(6, 5)),
                                           None, "einsum", Layout(0)),
    "einsum, the batch in an ellipsis": (lambda s, x: torch.einsum("c...w->w...", x.transpose(0, 1)), None, "einsum",
                                         Layout(1)),
    "einsum, implicit output": (lambda s, x: torch.einsum("zchw,cd", x, torch.ones(4, 3)), None, "einsum",
                                Layout(3)),  # the output is "dhwz": the letters that appear once, sorted
    "einsum, implicit output with an ellipsis": (lambda s, x: torch.einsum("...w,wv", x.transpose(0, 2),
                                                                           torch.ones(6, 2)), None, "einsum",
                                                 Layout(2)),
    "einsum on a folded batch": (lambda s, x: torch.einsum("nhw,nvw->nhv", inner4(x), inner4(x)), None, "einsum",
                                 FOLDED),
    "repeat_interleave along another dim": (lambda s, x: x.repeat_interleave(2, dim=-1), None,
                                            "repeat_interleave", Layout(0)),
    "repeat_interleave along the batch": (lambda s, x: x.repeat_interleave(3, dim=0), None, "repeat_interleave",
                                          Layout(0, 1, 3)),
    "repeat_interleave along a two-sided fold": (lambda s, x: outer2_inner2(x).repeat_interleave(3, dim=0), None,
                                                 "repeat_interleave", Layout(0, 2, 6)),
    "repeat_interleave with output_size": (lambda s, x: x.repeat_interleave(2, 0, output_size=2 * x.shape[0]), None,
                                           "repeat_interleave", Layout(0, 1, 2)),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_rows_of_folded_and_labelled_batches(name):
    op, module, aten, layout = LAYOUTS[name]
    v = op_verdict(op, aten, module)
    assert v.role is Role.SHARED, v.reason
    assert v.layout == layout


NOT_SEPARABLE = {  # name: (op, ATen op, words of the reason)
    "pixel shuffle of an unbatched input": (lambda s, x: F.pixel_shuffle(outer4(x), 2), "pixel_shuffle",
                                            "unbatched"),
    "fold of an unbatched input": (lambda s, x: F.fold(outer4(x).flatten(1), (7, 7), 2), "col2im", "unbatched"),
    "group norm with the batch among its channels": (lambda s, x: F.group_norm(x.transpose(0, 1), 1), "group_norm",
                                                     "dim 0"),
    "einsum summing over the batch": (lambda s, x: torch.einsum("bchw->chw", x), "einsum", "sums"),
    "einsum pairing samples": (lambda s, x: torch.einsum("bi,ci->bc", x.flatten(1), x.flatten(1)), "einsum",
                               "different labels"),
    "einsum, the batch's ellipsis summed": (lambda s, x: torch.einsum("...ij->ij", x), "einsum", "sums"),
    "einsum, a constant under the batch's label": (lambda s, x: torch.einsum("bc,b->bc", x.flatten(1), torch.ones(1)),
                                                   "einsum", "without rows"),
    "repeat_interleave flattening": (lambda s, x: x.repeat_interleave(2), "repeat_interleave", "flattens"),
    "repeat_interleave of the batch by a tensor": (lambda s, x: x.repeat_interleave(torch.tensor([2]), dim=0,
                                                                                   output_size=2 * x.shape[0]),
                                                   "repeat_interleave", "tensor"),
}


@pytest.mark.parametrize("name", NOT_SEPARABLE)
def test_ops_across_samples_stay_private(name):
    op, aten, words = NOT_SEPARABLE[name]
    v = op_verdict(op, aten)
    assert v.role is not Role.SHARED
    assert words in v.reason


def test_repeat_interleave_keeps_each_samples_rows_in_a_fold():
    """The arithmetic of the repeat_interleave rule: the rows of samples [start, start + n) of the
    output are those samples' input rows, repeated, for outer > 1 and inner > 1 alike."""
    for outer, inner, k in [(1, 1, 2), (2, 3, 4), (3, 1, 2), (1, 2, 3)]:
        x = torch.randn(outer * 5 * inner, 2)
        out = x.repeat_interleave(k, dim=0)
        for start, n in [(0, 1), (1, 3), (4, 1), (0, 5), (2, 0)]:
            want = take_rows(x, Layout(0, outer, inner), start, n).repeat_interleave(k, dim=0)
            assert torch.equal(take_rows(out, Layout(0, outer, inner * k), start, n), want)


class Sequencer(nn.Module):
    """An LSTM over each image row (sequencer's folded batch) and a GRU over each column with the
    batch folded outermost, from a zero state whose fill says ``outer=1``."""

    def __init__(self, state_from_rows=False):
        super().__init__()
        self.rows = nn.LSTM(6, 5, batch_first=True, bidirectional=True)
        self.cols = nn.GRU(6, 5, num_layers=2)
        self.state_from_rows = state_from_rows

    def forward(self, x):
        rows, _ = self.rows(inner4(x))  # (4B, 6, 10): no state given, nn.LSTM makes zeros
        cols = x.permute(3, 1, 0, 2).flatten(1, 2)  # (6, 4B, 6): Layout(1, outer=4)
        if self.state_from_rows:  # rows of x in the fold inner=4: they would pair with other samples
            h0 = inner4(x)[:, 0, :5].unsqueeze(0).expand(2, -1, -1)
        else:
            h0 = torch.zeros(2, 4 * x.shape[0], 5)  # a fill: Layout(1, inner=4), rows all alike
        out, hn = self.cols(cols, h0)  # (6, 4B, 5) and (2, 4B, 5): Layout(1, outer=4)
        b = x.shape[0]
        per_sample = [t.unflatten(1, (4, b)).permute(2, 0, 1, 3).flatten(1) for t in (out, hn)]
        return torch.cat([rows.flatten(1).unflatten(0, (b, 4)).flatten(1), *per_sample], 1)


def test_rnns_on_folded_batches():
    a = analyze(Sequencer().eval(), torch.randn(2, 4, 6, 6))
    by_op = {op_name(n): a.verdicts[n] for n in a.nodes if op_name(n) in ("lstm", "gru")}
    assert by_op["lstm"].role is Role.SHARED and by_op["lstm"].layout == (FOLDED, Layout(1, 1, 4), Layout(1, 1, 4))
    assert by_op["gru"].role is Role.SHARED and by_op["gru"].layout == (Layout(1, 4, 1), Layout(1, 4, 1))


def test_rnn_state_with_rows_in_another_fold_stays_private():
    a = analyze(Sequencer(state_from_rows=True).eval(), torch.randn(2, 4, 6, 6))
    (gru,) = [n for n in a.nodes if op_name(n) == "gru"]
    assert a.verdicts[gru].role is Role.PRIVATE and "hidden state" in a.verdicts[gru].reason


# --- realigned against separate execution -------------------------------------------------------


class Planes(nn.Module):
    """LeViT/TNT-style: each channel plane of a sample runs as an image of its own (the batch folded
    inner, then outer) through conv, eval batch norm, pooling, unfold/fold, pads, upsampling and
    group norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3)
        self.norm = nn.GroupNorm(1, 2)
        self.head = nn.Linear(4 * 2 * 3 * 3, 5)

    def forward(self, x):
        b = x.shape[0]
        h = F.max_pool2d(torch.relu(self.bn(self.conv(x.flatten(0, 1).unsqueeze(1)))), 3, 1, 1)
        h = F.fold(F.unfold(h, 3, padding=1), (6, 6), 3, padding=1)
        h = F.pad(h, (1, 1, 1, 1), mode="reflect").unflatten(0, (b, 4)).transpose(0, 1).flatten(0, 1)
        h = F.avg_pool2d(self.norm(F.interpolate(self.conv2(h), scale_factor=2.0)), 4)
        return self.head(h.unflatten(0, (4, b)).transpose(0, 1).flatten(1))


class Labelled(nn.Module):
    """MaxViT/MViT/GCViT-style einsums (with a constant, within each sample, an ellipsis, an
    implicit output) and repeat_interleave along another dim and along folded batches."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))
        self.rel = nn.Parameter(torch.randn(6, 6, 3))
        self.head = nn.Linear(4 * 3 + 12 * 12 + 2 * 6 * 36, 5)

    def forward(self, x):
        b = x.shape[0]
        q = torch.einsum("bchw,wv->bchv", x, self.w)
        att = torch.einsum("bchv,bdhv->bcd", q, q).softmax(-1)
        out = torch.einsum("bcd,bd...->bc...", att, x)
        rel = torch.einsum("...hw,hwk", out, self.rel)  # implicit output "...k"
        rep = out.flatten(0, 1)[:, 0].repeat_interleave(3, dim=0).repeat_interleave(2, dim=-1)  # (12B, 12)
        fold = outer2_inner2(x).repeat_interleave(3, dim=0).unflatten(0, (2, b, 6)).transpose(0, 1)
        return self.head(torch.cat([rel.flatten(1), rep.unflatten(0, (b, 12)).flatten(1), fold.flatten(1)], 1))


SIZES = [(1, 0, 3), (2, 1, 0), (0, 3, 1), (3, None, 2), (1, 1, 1)]


def shared_by_all(rm, names):
    """Every node of fragment 1 (the shallow tail) whose ATen op is in ``names`` runs once for all."""
    a = rm.analysis(1)
    nodes = [n for n in a.nodes if op_name(n) in names]
    assert {op_name(n) for n in nodes} == set(names)
    return all(rm.class_of(1, n).fragments == (0, 1, 2) for n in nodes)


@pytest.mark.parametrize("body, ops", [
    (Planes, ("conv2d", "batch_norm", "max_pool2d", "im2col", "col2im", "pad", "upsample_nearest2d",
              "group_norm", "avg_pool2d")),
    (Labelled, ("einsum", "repeat_interleave")),
    (Sequencer, ("lstm", "gru")),
], ids=["dim0", "einsum", "rnn"])
def test_realigned_equals_separate_execution(body, ops):
    torch.manual_seed(0)
    suffix = body().eval()
    if isinstance(suffix, Planes):
        with torch.no_grad():
            suffix.bn.running_mean.uniform_(-1, 1)
            suffix.bn.running_var.uniform_(0.5, 2)
    deep = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), suffix).eval()
    fragments = [deep, suffix, copy.deepcopy(deep)]
    examples = [torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6), torch.randn(2, 3, 6, 6)]
    rm = realign_all(fragments, examples)  # verify=True as well
    g = torch.Generator().manual_seed(1)
    for sizes in SIZES:
        args = [None if n is None else torch.randn((n, *ex.shape[1:]), generator=g) for ex, n in zip(examples, sizes)]
        graft_fx.testing.assert_equivalent(rm, args)
    assert shared_by_all(rm, ops), str(rm.plan)
