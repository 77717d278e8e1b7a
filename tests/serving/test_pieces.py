"""Profile pieces: the spread rule, piece records that tile the model, modules that compose back
to it, and layer costs checked against the conv and linear formulas."""

import pytest
import torch
import torch.nn as nn

from graft_fx import CutPoint, GraftError
from graft_fx.serving.pieces import MIN_WORK_LEFT, build_pieces, piece_costs, select, spread


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Dropout(), nn.Linear(16 * 3 * 3, 10), nn.ReLU(), nn.Linear(10, 4)).eval()


def example(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8)


def cuts(n: int) -> list[CutPoint]:
    return [CutPoint(f"c{i}", 4, i / n) for i in range(n)]


def test_spread_takes_evenly_spaced_cuts_by_index_from_the_input_to_the_last_usable_one():
    assert [c.name for c in spread(cuts(21), 10)] == [f"c{i}" for i in range(0, 21, 2)]
    assert [c.name for c in spread(cuts(5), 10)] == ["c0", "c1", "c2", "c3", "c4"]  # no repeats
    late = cuts(4) + [CutPoint("late", 4, 1 - MIN_WORK_LEFT / 2)]
    assert [c.name for c in spread(late, 3)] == ["c0", "c1", "c2", "c3"]
    with pytest.raises(GraftError):
        spread(cuts(3), 0)


def test_pieces_tile_the_model_and_their_flops_shares_sum_to_one():
    pieces, costs = piece_costs(net(), example(), pieces=3)
    assert pieces[0].start == "input_1" and pieces[-1].end == "output"
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    assert sum(p.flops_share for p in pieces) == pytest.approx(1.0)
    assert all(p.flops_share >= 0 for p in pieces)
    assert pieces[0].row_shape == (3, 8, 8) and pieces[0].activation_bytes == 3 * 8 * 8 * 4
    total = sum(c.flops_per_row for layer in costs for c in layer)
    for p, layer in zip(pieces, costs):
        assert sum(c.flops_per_row for c in layer) / total == pytest.approx(p.flops_share)


def test_piece_modules_compose_back_to_the_model():
    model = net()
    pieces, modules = build_pieces(model, example(), pieces=4)
    assert len(modules) == len(pieces) > 2
    x = example(3)
    y = x
    for p, m in zip(pieces, modules):
        assert tuple(y.shape[1:]) == p.row_shape
        y = m(y)
    torch.testing.assert_close(y, model(x))


def test_cuts_can_be_named_explicitly_and_must_exist():
    model = net()
    s = select(model, example(), at=["relu_1", "input_1"])
    assert [(p.start, p.end) for p in s.pieces] == [("input_1", "relu_1"), ("relu_1", "output")]
    with pytest.raises(GraftError, match="not cut points"):
        select(model, example(), at=["input_1", "nowhere"])


def test_conv_and_linear_costs_follow_the_formulas():
    model = net()
    s = select(model, example(), at=["input_1"])
    costs = {c.name: c for c in s.costs()[0]}
    conv = costs["conv2d_1"]  # Conv2d(8, 16, 3, stride=2) on 8 x 8 x 8 -> 16 x 3 x 3
    assert conv.kind == "conv" and conv.kernels == 1
    assert conv.flops_per_row == 2 * 8 * 16 * 3 * 3 * (3 * 3)   # 2 per multiply-add, no bias term
    assert conv.weight_bytes == (16 * 8 * 3 * 3 + 16) * 4
    assert conv.read_bytes_per_row == 8 * 8 * 8 * 4 and conv.write_bytes_per_row == 16 * 3 * 3 * 4
    first = costs["conv2d"]  # Conv2d(3, 8, 3, padding=1) on 3 x 8 x 8
    assert first.flops_per_row == 2 * 3 * 8 * 9 * 64
    linear = costs["linear"]
    assert linear.kind == "matmul" and linear.flops_per_row == 2 * 144 * 10
    assert linear.weight_bytes == (144 * 10 + 10) * 4
    relu = costs["relu"]
    assert relu.kind == "memory" and relu.flops_per_row == 0 and relu.kernels == 1
    assert relu.read_bytes_per_row == relu.write_bytes_per_row == 8 * 64 * 4
    assert costs["flatten"].kernels == 0 and costs["flatten"].read_bytes_per_row == 0  # a view: no kernel
    assert "dropout" not in costs  # eval-mode dropout is the identity: canonical capture drops it


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        y = self.norm(x)
        return x + self.attn(y, y, y, need_weights=False)[0]


def test_attention_costs_go_by_aten_op():
    torch.manual_seed(0)
    model = Attention().eval()
    s = select(model, torch.randn(1, 5, 16), at=["x"])
    layers = s.costs()[0]
    by_op = {}
    for c in layers:
        by_op.setdefault(c.op, []).append(c)
    sdpa, = by_op["scaled_dot_product_attention"]  # 2 heads of 8 over 5 tokens
    assert sdpa.kind == "matmul" and sdpa.kernels == 1
    assert sdpa.flops_per_row == 2 * 2 * 5 * 5 * (8 + 8)  # q k^T and p v
    assert sdpa.read_bytes_per_row == 3 * 5 * 16 * 4 and sdpa.write_bytes_per_row == 5 * 16 * 4
    projections = by_op["linear"]  # the input projection (3 x 16 x 16) and the output projection
    assert [c.flops_per_row for c in projections] == [2 * 5 * 16 * 48, 2 * 5 * 16 * 16]
    assert [c.weight_bytes for c in projections] == [(48 * 16 + 48) * 4, (16 * 16 + 16) * 4]
    assert all(c.kind == "matmul" and c.kernels == 1 for c in projections)
    assert by_op["layer_norm"][0].kind == "memory" and by_op["layer_norm"][0].weight_bytes == 2 * 16 * 4
    for op in ("view", "transpose", "select", "unflatten", "permute", "reshape"):
        assert all(c.kernels == 0 and c.read_bytes_per_row == c.write_bytes_per_row == 0 for c in by_op.get(op, [])), op
    assert by_op["reshape"] and by_op["transpose"]
    assert sum(c.flops_per_row for c in layers) == sdpa.flops_per_row + sum(c.flops_per_row for c in projections)
