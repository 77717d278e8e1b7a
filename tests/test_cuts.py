"""cut_points() and split() on small hand-written models, one per graph shape that cuts must handle.

Each model case knows which node names must be cuts and which must not: a residual block, an
Inception-like block and a DenseNet-like concatenation keep two tensors live inside them, so no
cut is offered there. The generic checks (order, FLOPs, bytes, tail(head(x)) == model(x)) run on
every case. What graft_fx reports is compared with an independent run of the traced model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import graft_fx
from graft_fx.analysis import analyze
from models import realign_all


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.branch_a = nn.Conv2d(4, 4, 3, padding=1)
        self.branch_b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        x = self.stem(x)
        y = self.branch_b(torch.relu(self.branch_a(x)))
        x = torch.relu(x + y)
        return self.fc(x.flatten(1))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.one = nn.Conv2d(4, 2, 1)
        self.reduce = nn.Conv2d(4, 2, 1)
        self.three = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.pool_proj = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        branches = [self.one(x), self.three(self.reduce(x)), self.pool_proj(self.pool(x))]
        x = torch.cat(branches, 1)
        return self.fc(x.mean((2, 3)))


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.grow1 = nn.Conv2d(4, 2, 3, padding=1)
        self.grow2 = nn.Conv2d(6, 2, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.grow1(x)], 1)
        x = torch.cat([x, self.grow2(x)], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TinyViT(nn.Module):
    """Reads the batch size once, at the start, and uses it after every cut."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 8))
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        n = x.shape[0]
        x = self.patch(x)
        x = x.reshape(n, 8, 4).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = x + self.mlp(self.norm(x))
        x = self.norm(x).reshape(n, 5, 8)  # a reshape to its own shape: canonical capture drops it
        return self.head(x[:, 0])


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.embed = nn.Linear(5, 4)
        self.fc = nn.Linear(2 * 4 * 4 + 4, 3)

    def forward(self, image, meta):
        h = torch.cat([self.conv(image).flatten(1), self.embed(meta)], 1)
        return self.fc(torch.relu(h))


@dataclass
class Case:
    name: str
    make: Callable[[], nn.Module]
    row_shapes: tuple[tuple[int, ...], ...]  # one per input
    cuts: set[str]  # node names that must be cuts
    not_cuts: set[str]  # node names that must not be

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.make().eval()

    def inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(batch, *shape) for shape in self.row_shapes)


CASES = [  # node names of the captured ATen graph
    Case("chain", Chain, ((3, 6, 6),), {"x", "conv2d", "relu", "adaptive_avg_pool2d", "flatten"}, set()),
    Case("residual", Residual, ((3, 6, 6),), {"x", "conv2d", "add", "relu_1", "flatten"}, {"conv2d_1", "relu", "conv2d_2"}),
    Case("inception", Inception, ((3, 6, 6),), {"x", "conv2d", "relu", "cat", "mean"},
         {"conv2d_1", "conv2d_2", "conv2d_3", "max_pool2d", "conv2d_4"}),
    Case("dense", Dense, ((3, 6, 6),), {"x", "conv2d", "cat", "cat_1"}, {"conv2d_1", "conv2d_2"}),
    Case("vit", TinyViT, ((3, 8, 8),), {"x", "conv2d", "reshape", "permute", "cat", "add", "layer_norm_1"},
         {"expand", "layer_norm", "linear"}),
    Case("two_inputs", TwoInputs, ((3, 6, 6), (5,)), {"cat", "relu"}, {"image", "meta", "conv2d", "flatten", "linear"}),
]

EXAMPLE_BATCH = 2


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


def captured(model: nn.Module) -> fx.GraphModule:
    return analyze(model, CASES[[c.make for c in CASES].index(type(model))].inputs(EXAMPLE_BATCH)).gm


def node_values(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Every node's value in a plain run of the captured model, by node name."""
    interpreter = fx.Interpreter(captured(model), garbage_collect_values=False)
    interpreter.run(*inputs)
    return {node.name: value for node, value in interpreter.env.items()}


def graph_order(model: nn.Module) -> list[str]:
    return [n.name for n in captured(model).graph.nodes]


def test_cut_names_are_unique_and_in_graph_order(case):
    names = [c.name for c in graft_fx.cut_points(case.model(), case.inputs(EXAMPLE_BATCH))]
    order = graph_order(case.model())
    assert len(set(names)) == len(names)
    assert set(names) <= set(order)
    assert names == sorted(names, key=order.index)


def test_cuts_are_offered_only_where_one_tensor_crosses(case):
    names = {c.name for c in graft_fx.cut_points(case.model(), case.inputs(EXAMPLE_BATCH))}
    assert case.cuts <= names
    assert not case.not_cuts & names


def test_chain_is_cut_at_every_layer_boundary():
    names = [c.name for c in graft_fx.cut_points(Chain().eval(), torch.randn(2, 3, 6, 6))]
    assert names == ["x", "conv2d", "relu", "adaptive_avg_pool2d", "flatten"]


def test_first_cut_is_the_raw_input_when_there_is_one(case):
    first = graft_fx.cut_points(case.model(), case.inputs(EXAMPLE_BATCH))[0]
    if len(case.row_shapes) == 1:
        assert first.name == "x"
        assert first.flops_before == 0
    else:
        assert first.name not in ("image", "meta")
        assert first.flops_before > 0


def test_flops_before_grows_and_stays_below_one(case):
    flops = [c.flops_before for c in graft_fx.cut_points(case.model(), case.inputs(EXAMPLE_BATCH))]
    assert flops == sorted(flops)
    assert all(0 <= f < 1 for f in flops)


def flops_per_row(module: nn.Module, row_shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(1, *row_shape))
    return counter.get_total_flops()


def test_flops_before_is_the_share_of_flops_run_before_the_cut():
    model = Chain().eval()
    conv, fc = flops_per_row(model.conv, (3, 6, 6)), flops_per_row(model.fc, (4,))
    cuts = {c.name: c.flops_before for c in graft_fx.cut_points(model, torch.randn(2, 3, 6, 6))}
    assert cuts["conv2d"] == pytest.approx(conv / (conv + fc))
    assert cuts["flatten"] == cuts["conv2d"]


def test_activation_bytes_are_the_crossing_tensor_bytes_per_sample(case):
    inputs = case.inputs(3)
    values = node_values(case.model(), inputs)
    for cut in graft_fx.cut_points(case.model(), inputs):
        crossing = values[cut.name]
        assert cut.activation_bytes == crossing.numel() // 3 * crossing.element_size(), cut.name


def test_tail_of_head_is_the_model(case):
    """At batch sizes other than the example's, 0 included: a tail re-reads the batch size."""
    model = case.model()
    example = case.inputs(EXAMPLE_BATCH)
    runs = [(inputs, model(*inputs), node_values(model, inputs)) for inputs in map(case.inputs, (1, 3, 0))]
    for cut in graft_fx.cut_points(model, example):
        for at in (cut, cut.name):
            head, tail = graft_fx.split(model, at, example)
            for inputs, expected, values in runs:
                crossing = head(*inputs)
                torch.testing.assert_close(crossing, values[cut.name], rtol=0, atol=0)
                torch.testing.assert_close(tail(crossing), expected, msg=lambda m: f"cut {cut.name}: {m}")


def test_two_input_model_splits_with_both_inputs_in_the_head():
    model = TwoInputs().eval()
    head, tail = graft_fx.split(model, "cat", (torch.randn(2, 3, 6, 6), torch.randn(2, 5)))
    assert [n.name for n in head.graph.nodes if n.op == "placeholder"] == ["image", "meta"]
    assert [n.name for n in tail.graph.nodes if n.op == "placeholder"] == ["cat"]


def test_unknown_cut_name_lists_the_valid_ones(case):
    model = case.model()
    example = case.inputs(EXAMPLE_BATCH)
    names = [c.name for c in graft_fx.cut_points(model, example)]
    for wrong in ("no_such_node", *case.not_cuts):
        with pytest.raises(graft_fx.GraftError, match="is not a cut point") as info:
            graft_fx.split(model, wrong, example)
        message = str(info.value)
        assert repr(wrong) in message
        assert message.rsplit(": ", 1)[1].split(", ") == names


def test_tail_records_the_crossing_row_shape_and_realigns_without_examples(case):
    model = case.model()
    inputs = case.inputs(3)
    for cut in graft_fx.cut_points(model, case.inputs(EXAMPLE_BATCH)):
        head, tail = graft_fx.split(model, cut, case.inputs(EXAMPLE_BATCH))
        crossing = head(*inputs)
        (placeholder,) = [n for n in tail.graph.nodes if n.op == "placeholder"]
        meta = placeholder.meta["val"]
        assert tuple(meta.shape[1:]) == tuple(crossing.shape[1:]), cut.name
        assert meta.dtype == crossing.dtype
        (realigned,) = realign_all([tail])(crossing)
        torch.testing.assert_close(realigned, tail(crossing))


def test_in_place_updates_stay_on_their_side_of_the_cut():
    """A batch norm in training mode counts its batches: the head counts them, the tail does not."""
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train()
    x = torch.randn(2, 3, 4, 4)
    cut = [c for c in graft_fx.cut_points(model, x) if c.layer.startswith("1 ")][0]
    head, tail = graft_fx.split(model, cut, x)
    first, second = model[0].num_batches_tracked.item(), model[2].num_batches_tracked.item()
    tail(head(x))
    assert model[0].num_batches_tracked.item() == first + 1
    assert model[2].num_batches_tracked.item() == second + 1


def test_tails_are_splits_tails_from_one_analysis(case, monkeypatch):
    """``tails`` gives every cut's tail as ``split`` does (tail(head(x)) == model(x)), analysing
    and locating the cuts of the model once for all of them."""
    model = case.model()
    example = case.inputs(EXAMPLE_BATCH)
    cuts = graft_fx.cut_points(model, example)
    heads = [graft_fx.split(model, cut, example)[0] for cut in cuts]
    calls = {"analyze": 0, "located_cuts": 0}
    for name in calls:
        real = getattr(graft_fx.cuts, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(graft_fx.cuts, name, counted)
    at = [cuts[-1], *(c.name for c in cuts)]  # any order, repeats, CutPoints or names
    got = graft_fx.cuts.tails(model, at, example)
    assert calls == {"analyze": 1, "located_cuts": 1}
    assert len(got) == len(at) and all(isinstance(t, fx.GraphModule) for t in got)
    for inputs in map(case.inputs, (1, 3)):
        expected = model(*inputs)
        for cut, tail in zip([cuts[-1], *cuts], got):
            torch.testing.assert_close(tail(heads[cuts.index(cut)](*inputs)), expected,
                                       msg=lambda m: f"cut {cut.name}: {m}")


def test_tails_name_a_wrong_cut_before_building_any():
    model = Chain().eval()
    with pytest.raises(graft_fx.GraftError, match="'nowhere' is not a cut point"):
        graft_fx.cuts.tails(model, ["conv2d", "nowhere"], torch.randn(2, 3, 6, 6))
    with pytest.raises(graft_fx.GraftError, match="takes a list"):
        graft_fx.cuts.tails(model, "conv2d", torch.randn(2, 3, 6, 6))
    assert graft_fx.cuts.tails(model, [], torch.randn(2, 3, 6, 6)) == []
