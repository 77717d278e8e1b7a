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
from graft_fx.testing import assert_equivalent, calls, random_inputs


def fine_tuned(model: nn.Module, k: int, scale: float = 0.05) -> list[nn.Module]:
    """``model`` and k - 1 copies whose every parameter and buffer is perturbed differently."""
    copies = [model]
    for i in range(1, k):
        m = copy.deepcopy(model)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, t in [*m.named_parameters(), *m.named_buffers()]:
                if t.is_floating_point():
                    t.add_(scale * torch.randn(t.shape, generator=g))
                    if name.endswith("running_var"):
                        t.abs_()  # a variance stays positive
        copies.append(m.eval())
    return copies


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
    copies = fine_tuned(model, 3)
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
@pytest.mark.parametrize("sizes", [(1, 2, 3), (0, 1, 0), (None, 2, None), (1, None, 0), (0, 0, 0)])
def test_outputs_equal_separate_execution(kind, kernels, sizes):
    assert_equivalent(realigned(kind, "structure", kernels), random_inputs(realigned(kind, "structure"), sizes))


def test_per_segment_linears_become_one_segment_matmul():
    counters.clear()
    rm = realigned.__wrapped__("mlp", "structure", "triton")
    ops = [str(n.target) for n in rm.graph_module.graph.nodes if n.op == "call_function"]
    assert ops.count("graft.segment_matmul.default") == 3 and "aten.linear.default" not in ops
    assert counters["graft"]["segment_matmul"] >= 3


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
    tails = [graft_fx.split(m, c, example)[1] for m, c in zip(fine_tuned(model, 3, 0.02), picked)]
    rm = graft_fx.realign(tails, share="structure", kernels="triton")
    assert any(s.batched and s.by_structure for s in rm.plan.segments), rm.plan
    for sizes in ((1, 2, 1), (0, 1, 0), (1, None, 0)):
        assert_equivalent(rm, random_inputs(rm, sizes))
