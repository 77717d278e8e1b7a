"""The acceptance test: torchvision models cut at several depths, their tails realigned.

Each model is built once (random weights, eval mode), cut at four cuts spread over its
cut_points, and its tails realigned. One call feeds each fragment its own batch size, one
fragment absent, as the server sees them; the outputs must match running each tail alone, and
the layers after the deepest cut must run once, batched, for every fragment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm
from torch.fx.passes.shape_prop import ShapeProp

import graft_fx

BATCHES = (1, 2, None, 1)  # rows per fragment, from the shallowest cut to the deepest; None: absent

MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet50": (lambda: tvm.resnet50(weights=None), 224),
    "vgg16": (lambda: tvm.vgg16(weights=None), 224),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(weights=None), 224),
    "inception_v3": (lambda: tvm.inception_v3(weights=None, aux_logits=False, init_weights=False), 299),
    "vit_b_16": (lambda: tvm.vit_b_16(weights=None), 224),
}


@dataclass
class Served:
    tails: list[nn.Module]
    inputs: list[torch.Tensor | None]
    outputs: tuple[Any, ...]
    plan: graft_fx.Plan


def build(name: str) -> tuple[nn.Module, int]:
    make, resolution = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():  # vit_b_16's head starts at zero: its outputs would be too
                nn.init.normal_(p, std=0.02)
    return model, resolution


def spread(cuts: list[graft_fx.CutPoint], count: int) -> list[graft_fx.CutPoint]:
    """``count`` cuts from early to late, never the raw input nor the last cut."""
    return [cuts[len(cuts) * k // (count + 1)] for k in range(1, count + 1)]


@pytest.fixture(scope="module", params=[
    "resnet50",
    "vgg16",
    "mobilenet_v2",
    "inception_v3",
    "vit_b_16",
])
def served(request) -> Served:
    model, resolution = build(request.param)
    images = torch.randn(max(b or 0 for b in BATCHES), 3, resolution, resolution)
    cuts = spread(graft_fx.cut_points(model, images), len(BATCHES))
    heads, tails = zip(*(graft_fx.split(model, cut, images) for cut in cuts))
    realigned = graft_fx.realign(tails)
    with torch.inference_mode():
        inputs = [None if b is None else head(images[:b]) for head, b in zip(heads, BATCHES)]
        outputs = realigned(*inputs)
    return Served(list(tails), inputs, outputs, realigned.plan)


def test_realigned_outputs_match_each_tail_alone(served):
    with torch.inference_mode():
        for f, (tail, x, out) in enumerate(zip(served.tails, served.inputs, served.outputs)):
            if x is None:
                assert out is None, f"fragment {f} is absent"
                continue
            expected = tail(x)
            scale = expected.abs().max().item()
            assert scale > 0, f"fragment {f}: an all-zero output would compare equal to anything"
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * scale)


def tensor_ops(tail: nn.Module, x: torch.Tensor) -> int:
    """How many call nodes of ``tail`` compute tensors (not sizes, checks or asserts)."""
    ShapeProp(tail).propagate(x)
    return sum(n.op.startswith("call_") and "tensor_meta" in n.meta for n in tail.graph.nodes)


def test_layers_after_the_deepest_cut_run_batched(served):
    everyone = tuple(range(len(BATCHES)))
    shared = [s for s in served.plan.segments if s.fragments == everyone]
    assert len(shared) == 1, str(served.plan)
    with torch.inference_mode():
        deepest = tensor_ops(served.tails[-1], served.inputs[-1])
    assert shared[0].num_nodes >= deepest, str(served.plan)
    assert served.plan.batched_flops_fraction > 0.3, str(served.plan)
