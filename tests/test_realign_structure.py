"""Structural sharing (``realign(share="structure")``): fine-tuned copies of one model batch their
layers while each fragment's rows meet its own weights; outputs equal separate execution, on
generated models, torchvision models and random calls, with the kernels and without."""

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.utils import counters

import graft_fx
from graft_fx import GraftError
from graft_fx.testing import assert_equivalent, calls, fine_tuned, random_inputs


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 24), nn.LayerNorm(24), nn.GELU(),
                         nn.Linear(24, 6)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


@functools.cache
def realigned(kind: str, share: str, kernels: str = "torch"):
    model, rows = (mlp(), (2, 12)) if kind == "mlp" else (cnn(), (2, 3, 10, 10))
    copies = fine_tuned(model, 3, 0.05)
    return graft_fx.realign(copies, [torch.randn(rows) for _ in copies], share=share, kernels=kernels)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fine_tuned_copies_share_every_layer_by_structure(kind):
    rm = realigned(kind, "structure")
    (segment,) = rm.plan.segments
    assert segment.fragments == (0, 1, 2) and segment.by_structure >= 3
    assert "weights differ in" in str(rm.plan)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_by_weights_they_share_only_what_is_equal(kind):
    rm = realigned(kind, "weights")
    assert not any(s.batched and s.num_nodes > 1 for s in rm.plan.segments)
    assert not any(s.by_structure for s in rm.plan.segments)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("sizes", [(1, 2, 3), (2, 2, 2), (0, 1, 0), (None, 2, None), (1, None, 0), (0, 0, 0)])
def test_outputs_equal_separate_execution(kind, kernels, sizes):
    assert_equivalent(realigned(kind, "structure", kernels), random_inputs(realigned(kind, "structure"), sizes))


def test_per_segment_linears_and_norms_become_one_kernel_call_each():
    counters.clear()
    rm = realigned.__wrapped__("mlp", "structure", "triton")
    ops = [str(n.target) for n in rm.graph_module.graph.nodes if n.op == "call_function"]
    assert ops.count("graft.segment_matmul.default") == 3 and "aten.linear.default" not in ops
    assert ops.count("graft.segment_affine.default") == 1 and ops.count("aten.layer_norm.default") == 1
    assert counters["graft"]["segment_matmul"] >= 3 and counters["graft"]["segment_layer_norm"] >= 1
    rm = realigned.__wrapped__("cnn", "structure", "triton")
    ops = [str(n.target) for n in rm.graph_module.graph.nodes if n.op == "call_function"]
    assert ops.count("graft.segment_affine.default") == 2 and "aten.batch_norm.default" not in ops
    assert ops.count("graft.segment_conv2d.default") == 2 and "aten.conv2d.default" not in ops
    assert counters["graft"]["segment_batch_norm"] >= 2 and counters["graft"]["segment_conv2d"] >= 2


@given(data=st.data())
@settings(max_examples=15)
def test_random_calls_equal_separate_execution(data):
    rm = realigned("mlp", "structure", "triton")
    assert_equivalent(rm, data.draw(calls(rm)))


def test_copies_with_equal_weights_run_as_one_segment():
    """Two of three copies are equal: their rows form one run, the third its own."""
    base = mlp()
    same, other = copy.deepcopy(base), fine_tuned(base, 2)[1]
    rm = graft_fx.realign([base, same, other], [torch.randn(2, 12)] * 3, share="structure", kernels="triton")
    (call, *_) = [n for n in rm.graph_module.graph.nodes if "segment_matmul" in str(n.target)]
    assert len(call.args[2]) == 2  # segments: fragments 0 and 1 together, then 2
    assert_equivalent(rm, random_inputs(rm, (2, 1, 3)))


def test_a_weight_used_outside_the_structural_layers_is_shared_by_value_only():
    """``x @ w`` with a parameter: no rule runs a matmul per segment, so differing ``w`` stay private."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 6))
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x @ self.w)

    torch.manual_seed(0)
    copies = fine_tuned(Scaled().eval(), 2)
    rm = graft_fx.realign(copies, [torch.randn(2, 6)] * 2, share="structure")
    batched = [s for s in rm.plan.segments if s.batched]
    assert all(s.num_nodes == 1 for s in batched)  # the linear after the private matmul, by structure
    assert_equivalent(rm, random_inputs(rm, (2, 3)))


def test_an_unknown_share_is_refused():
    with pytest.raises(GraftError, match="share='layers'.*weights, structure"):
        graft_fx.realign([mlp()], [torch.randn(2, 12)], share="layers")


@pytest.mark.parametrize("name, cuts", [("resnet18", ("relu_", "add__3", "relu__8")),
                                        ("mobilenet_v3_small", (None, None, None))])
def test_fine_tuned_torchvision_tails(name, cuts):
    """Three fine-tuned copies of a torchvision model (random weights, perturbed per copy), each
    cut at its own point: shared by structure, exact at batch sizes 0 and 1 too."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    example = torch.randn(2, 3, 64, 64)
    names = [c.name for c in graft_fx.cut_points(model, example)]
    picked = [c or names[i * len(names) // 4 + 2] for i, c in enumerate(cuts)]
    tails = [graft_fx.split(m, c, example)[1] for m, c in zip(fine_tuned(model, 3), picked)]
    rm = graft_fx.realign(tails, share="structure", kernels="triton")
    assert any(s.batched and s.by_structure for s in rm.plan.segments), rm.plan
    for sizes in ((1, 2, 1), (0, 1, 0), (1, None, 0)):
        assert_equivalent(rm, random_inputs(rm, sizes))


class Projected(nn.Module):
    """A structural layer applied to a parameter alone (a projected positional table): a constant."""

    def __init__(self):
        super().__init__()
        self.pos, self.proj, self.fc = nn.Parameter(torch.randn(4, 8)), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x + self.proj(self.pos))


class Pooled(nn.Module):
    """Attention pooling with a learned query projected from a parameter, then SDPA."""

    def __init__(self):
        super().__init__()
        self.latent, self.q, self.kv = nn.Parameter(torch.randn(1, 2, 8)), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        k = self.kv(x)
        return torch.nn.functional.scaled_dot_product_attention(self.q(self.latent).expand(x.shape[0], -1, -1), k, k)


@pytest.mark.parametrize("cls", [Projected, Pooled])
def test_a_layer_on_constants_with_weights_that_differ_is_computed_per_fragment(cls):
    """Found by review: the layer on constants was computed from fragment 0's weights for all."""
    torch.manual_seed(0)
    a = cls().eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        (b.proj if cls is Projected else b.q).weight.add_(0.1)
    rm = graft_fx.realign([a, b], [torch.randn(2, 4, 8)] * 2, share="structure", min_flops_per_byte=0)
    for sizes in ((2, 3), (0, 1), (None, 2)):
        assert_equivalent(rm, random_inputs(rm, sizes))


def test_dtypes_the_kernels_do_not_take_keep_the_library_ops():
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 6)).double().eval()
    rm = graft_fx.realign(fine_tuned(model, 2), [torch.randn(2, 12, dtype=torch.float64)] * 2, share="structure",
                          kernels="triton")
    assert not any("segment_matmul" in str(n.target) for n in rm.graph_module.graph.nodes)
    assert_equivalent(rm, random_inputs(rm, (2, 1)))


class Tokens(nn.Module):
    """A transformer-style block on tokens: a positional table, a linear on [B, T, C] rows, a
    layer scale."""

    def __init__(self):
        super().__init__()
        self.pos, self.fc, self.gamma = nn.Parameter(torch.randn(5, 8)), nn.Linear(8, 8), nn.Parameter(torch.ones(8))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.gamma * self.fc(x + self.pos)))


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_token_linears_positional_tables_and_layer_scales_share_by_structure(kernels):
    torch.manual_seed(0)
    copies = fine_tuned(Tokens().eval(), 3)
    counters.clear()
    rm = graft_fx.realign(copies, [torch.randn(2, 5, 8)] * 3, share="structure", kernels=kernels,
                          min_flops_per_byte=0)  # a toy: the cost rule would keep it private
    (segment,) = rm.plan.segments
    assert segment.by_structure == 4  # the positional add, fc, the layer scale, out
    if kernels == "triton":
        assert counters["graft"]["segment_matmul"] == 2
    for sizes in ((1, 2, 3), (0, 1, 0), (None, 2, None)):
        assert_equivalent(rm, random_inputs(rm, sizes))


def test_a_constant_class_whose_weights_differ_is_computed_per_run(monkeypatch):
    """Defence in depth: were keys to merge a layer on constants across differing weights (the
    bug review found), the emitter still computes it once per run of equal weights."""
    import graft_fx.keys as keys

    monkeypatch.setattr(keys, "structural", lambda node, verdicts: bool(node.users) and all(
        user.target in keys.STRUCTURAL for user in node.users))
    torch.manual_seed(0)
    a = Projected().eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.proj.weight.add_(0.1)
    rm = graft_fx.realign([a, b], [torch.randn(2, 4, 8)] * 2, share="structure", min_flops_per_byte=0)
    assert any(n.name.startswith("linear_f") for n in rm.graph_module.graph.nodes)  # proj(pos), per run
    assert_equivalent(rm, random_inputs(rm, (2, 3)))


def test_graphs_for_subsets_of_fragments_reuse_one_stack_per_layer():
    """Found by review: every set of present fragments stacked its own copy of the weights. The
    graph of all fragments stacks each layer once; every subset reuses it, absent fragments
    getting segments of 0 rows."""
    copies = fine_tuned(mlp(), 4)
    rm = graft_fx.realign(copies, [torch.randn(2, 12)] * 4, share="structure", kernels="triton")
    stacks = len(rm._stacks)
    for sizes in ((1, None, 2, None), (None, 3, None, 1), (2, None, None, None), (0, 1, None, 2)):
        assert_equivalent(rm, random_inputs(rm, sizes))
    assert len(rm._stacks) == stacks == 4  # the three linears and the layer norm


def test_weights_updated_in_place_after_realign_reach_the_lowered_graphs():
    """Found by review: the stacked weights were a snapshot, so a fine-tune loaded after
    realign changed the library path's outputs but not the kernels'. The module re-aligns."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)).eval()
    copies = fine_tuned(model, 3)
    rm = graft_fx.realign(copies, [torch.randn(2, 8)] * 3, share="structure", kernels="triton")
    with torch.no_grad():
        copies[1][0].weight.add_(1.0)
        copies[1][1].running_mean.add_(1.0)
    copies[2].load_state_dict(fine_tuned(model, 4)[3].state_dict())
    for sizes in ((2, 2, 2), (None, 1, 3)):
        assert_equivalent(rm, random_inputs(rm, sizes))


def test_a_batch_norm_with_a_large_mean_keeps_eager_s_own_op():
    """Found by review: when the mean is large against the spread of the rows (raw tabular
    features), eager's folded arithmetic on a CPU and any other rounding part by more than the
    tolerance; such a batch norm keeps the per-segment form (eager's op). A moderate one is
    lowered, centred first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[0].running_mean.fill_(2e4)
        model[0].running_var.fill_(100.0)
    copies = fine_tuned(model, 3, 0.05)
    xs = [2e4 + 10 * torch.randn(5, 16) for _ in copies]
    rm = graft_fx.realign(copies, [x[:2] for x in xs], share="structure", kernels="triton", min_flops_per_byte=0)
    assert not any("segment_affine" in str(n.target) for n in rm.graph_module.graph.nodes)
    assert_equivalent(rm, tuple(xs))
    with torch.no_grad():
        for m in copies:
            m[0].running_mean.div_(2000.0)  # |mean| / std about 1: lowered
    rm = graft_fx.realign(copies, [x[:2] / 2000 for x in xs], share="structure", kernels="triton",
                          min_flops_per_byte=0)
    assert any("segment_affine" in str(n.target) for n in rm.graph_module.graph.nodes)
    assert_equivalent(rm, tuple(x / 2000 for x in xs))


def test_statistics_loaded_after_realign_are_guarded_as_at_realign():
    """Found by review: new statistics with a large mean, loaded into a lowered module, went on
    through ``segment_affine``. The module re-aligns and re-lowers, so the guard sees them."""
    torch.manual_seed(0)
    copies = fine_tuned(nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 4)).eval(), 3, 0.05)
    rm = graft_fx.realign(copies, [torch.randn(2, 16)] * 3, share="structure", kernels="triton",
                          min_flops_per_byte=0)
    assert any("segment_affine" in str(n.target) for n in rm.graph_module.graph.nodes)
    with torch.no_grad():
        for m in copies:
            m[0].running_mean.fill_(2e4)
            m[0].running_var.fill_(100.0)
    xs = tuple(2e4 + 10 * torch.randn(5, 16) for _ in copies)
    assert_equivalent(rm, xs)
    assert not any("segment_affine" in str(n.target) for n in rm.graph_module.graph.nodes)


def test_fragments_given_as_modules_graph_modules_and_exported_programs():
    """One fine-tuned copy each as an nn.Module, an fx GraphModule (a split tail) and a
    torch.export ExportedProgram: they share by structure alike."""
    copies = fine_tuned(mlp(), 3)
    example = torch.randn(2, 12)
    batch = torch.export.Dim("batch")
    program = torch.export.export(copies[2], (example,), dynamic_shapes=({0: batch},))
    tail = graft_fx.split(copies[1], graft_fx.cut_points(copies[1], example)[0].name, example)[1]
    rm = graft_fx.realign([copies[0], tail, program], [example, None, None], share="structure", kernels="triton")
    assert any(s.batched and s.by_structure for s in rm.plan.segments), rm.plan
    for sizes in ((1, 2, 3), (0, 1, 1), (2, None, 1)):
        assert_equivalent(rm, random_inputs(rm, sizes))
