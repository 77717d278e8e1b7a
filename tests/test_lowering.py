"""Lowering realigned graphs into graft's kernel ops: the rules match what they should and nothing
else, every rewrite is counted, and a lowered module gives the fragments' own outputs (the
kernels run in Triton's interpreter on this CPU: tests/conftest.py)."""

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
from models import assert_gradients_match


def mlp(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 24), act, nn.Linear(24, 6)).eval()


def tails(model: nn.Module, cuts: list[str], rows: int = 2) -> list[nn.Module]:
    example = torch.randn(rows, *next(model.parameters()).shape[1:2])
    return [graft_fx.split(model, c, example)[1] for c in cuts]


def kernel_calls(rm) -> list:
    return [n for n in rm.graph_module.graph.nodes if n.op == "call_function" and "graft." in str(n.target)]


@pytest.fixture
def fresh_counters():
    counters.clear()
    yield counters
    counters.clear()


@pytest.mark.parametrize("act, fused", [(nn.ReLU(), "relu"), (nn.GELU(), "gelu"), (nn.GELU("tanh"), "none"),
                                        (nn.Sigmoid(), "none")])
def test_a_gathered_linear_becomes_one_kernel_call_with_its_activation(fresh_counters, act, fused):
    rm = graft_fx.realign(tails(mlp(act), ["linear", "relu"]), kernels="triton")
    (call,) = kernel_calls(rm)
    assert str(call.target) == "graft.gather_linear.default" and call.kwargs["activation"] == fused
    assert not any(n.target is torch.cat for n in rm.graph_module.graph.nodes)
    assert fresh_counters["graft"]["gather_linear"] >= 1


@functools.cache
def three_tails():
    return graft_fx.realign(tails(mlp(nn.GELU()), ["linear", "relu", "linear_1"]), kernels="triton")


@given(data=st.data())
@settings(max_examples=10)
def test_lowered_modules_equal_separate_execution(data):
    rm = three_tails()
    assert_equivalent(rm, data.draw(calls(rm)))


@pytest.mark.parametrize("sizes", [(1, 1), (0, 3), (3, 0), (0, 0), (1, None), (None, 2)])
def test_batch_sizes_one_and_zero_and_absent_fragments(sizes):
    rm = graft_fx.realign(tails(mlp(nn.ReLU()), ["linear", "relu"]), kernels="triton")
    assert_equivalent(rm, random_inputs(rm, sizes))


def test_torch_rewrites_nothing_and_auto_rewrites_nothing_without_cuda(fresh_counters):
    for kernels in ("torch", "auto"):
        rm = graft_fx.realign(tails(mlp(nn.ReLU()), ["linear", "relu"]), kernels=kernels)
        assert not kernel_calls(rm) and any(n.target is torch.cat for n in rm.graph_module.graph.nodes)
    assert fresh_counters["graft"]["gather_linear"] == 0


def test_a_gather_with_other_users_stays_a_cat():
    """Two consumers of the gathered rows: the copy is needed anyway, nothing is fused."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            x = torch.relu(x)
            return self.a(x) + x.sum(-1, keepdim=True)

    torch.manual_seed(0)
    model = Two().eval()
    rm = graft_fx.realign([model, model], [torch.randn(2, 8), torch.randn(2, 8)], kernels="triton")
    assert not kernel_calls(rm)


def test_an_unknown_kernels_choice_is_refused():
    with pytest.raises(GraftError, match="kernels='cuda'.*auto, triton, torch"):
        graft_fx.realign(tails(mlp(nn.ReLU()), ["linear", "relu"]), kernels="cuda")


def test_resnet18_tails_meeting_at_the_classifier():
    """torchvision's resnet18 (a 10-class head to keep the interpreter quick): one tail starts
    at the flattened features, the other at the last block's output; their rows meet at fc."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    example = torch.randn(2, 3, 64, 64)
    parts = [graft_fx.split(model, c, example)[1] for c in ("flatten", "relu__16")]
    counters.clear()
    # the cost rule declines a 10-class head (its gather copies more than it batches): share it anyway
    rm = graft_fx.realign(parts, kernels="triton", min_flops_per_byte=0)
    assert counters["graft"]["gather_linear"] >= 1 and kernel_calls(rm)
    for sizes in ((2, 1), (1, 0), (0, 1)):
        assert_equivalent(rm, random_inputs(rm, sizes))


def test_a_junction_feeding_a_convolution_becomes_one_gather(fresh_counters):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    example = torch.randn(2, 3, 8, 8)
    parts = [graft_fx.split(model, c, example)[1] for c in ("conv2d", "relu")]
    rm = graft_fx.realign(parts, kernels="triton", min_flops_per_byte=0)
    assert [str(n.target) for n in kernel_calls(rm)] == ["graft.gather.default"]
    assert fresh_counters["graft"]["gather"] == 1
    for sizes in ((2, 1), (0, 1), (1, None)):
        assert_equivalent(rm, random_inputs(rm, sizes))


@pytest.mark.parametrize("sizes", [(2, 3), (1, 1)])
def test_rows_that_require_grad_are_differentiated_through_the_library_ops(sizes):
    """Found by review: fine-tuned copies with frozen weights, lowered into segment_matmul and
    segment_affine, called in grad mode on rows that require grad (a saliency map) raised
    InferenceOnlyError at backward, where eager differentiates. Such a call runs the unlowered
    graph; its input gradients are eager's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 6)).eval()
    copies = fine_tuned(model, 2)
    for p in (p for m in copies for p in m.parameters()):
        p.requires_grad_(False)
    rm = graft_fx.realign(copies, [torch.randn(2, 12)] * 2, share="structure", kernels="triton")
    assert {"graft.segment_matmul.default", "graft.segment_affine.default"} <= {str(n.target) for n in kernel_calls(rm)}
    inputs = [torch.randn(rows, 12, requires_grad=True) for rows in sizes]
    sum(out.sum() for out in rm(*inputs)).backward()
    got = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    sum(m(x).sum() for m, x in zip(copies, inputs)).backward()
    for g, x in zip(got, inputs):
        torch.testing.assert_close(g, x.grad)


def test_weights_that_require_grad_are_differentiated_through_the_library_ops():
    """Found by review: the kernel ops read stacked copies of the weights, so a call in grad mode
    lost the gradients into the fragments' own weights without a word. Such a call runs the
    unlowered graph; under no_grad the kernels run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 6)).eval()
    copies = fine_tuned(model, 2)
    rm = graft_fx.realign(copies, [torch.randn(2, 12)] * 2, share="structure", kernels="triton")
    xs = [torch.randn(3, 12), torch.randn(2, 12)]
    assert_gradients_match(rm, copies, xs)
    with torch.no_grad():
        rm(*xs)
    assert kernel_calls(rm)  # the lowered graphs are still the ones inference runs
