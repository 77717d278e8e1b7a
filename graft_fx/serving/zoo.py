"""The models the serving tools know by name: torchvision classifiers with random weights.

Weights do not change latency, and none can be downloaded here, so every model is built with
``weights=None``. Inception v3 is built without its auxiliary classifier (an inference server
does not run it) and takes 299x299 inputs; the others take 224x224.
"""

from __future__ import annotations

import torch
import torchvision

from ..errors import GraftError

SIDES = {"inception_v3": 299}  # input side where it is not 224
BENCHMARK_MODELS = ("resnet50", "vgg16", "mobilenet_v2", "inception_v3", "vit_b_16")


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """Model ``name`` from torchvision in eval mode, and an example input of one row."""
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise GraftError(f"unknown model {name!r}: expected a torchvision classification model, "
                         f"such as {', '.join(BENCHMARK_MODELS)}")
    kwargs = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    side = SIDES.get(name, 224)
    return model, torch.randn(1, 3, side, side)
