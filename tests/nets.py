"""Hypothesis strategies that draw small random PyTorch networks for property tests.

`networks()` draws a `Drawn`: a `Net` and an example input with two rows. A network is an image
stage (N, C, H, W tensors; 1 to 6 blocks), a flatten, and a feature stage (N, F tensors; 1 to 4
blocks):

    image blocks    conv, eval-mode batch norm, relu, gelu, 2x2 pool, residual
                    (conv-bn-relu-conv + skip), inception (2 or 3 parallel branches, cat on dim 1)
    feature blocks  linear, relu, gelu, residual (x + linear(x)), concat of two linears on dim 1

Call styles are drawn too (nn.ReLU, torch.relu, F.relu, Tensor.relu; nn.Flatten, torch.flatten,
Tensor.flatten; `+`; torch.cat), so traced graphs mix call_module, call_function and call_method
nodes. Every op of these networks is batch-separable: output row i depends on input row i only.

With `allow_unshareable=True` the strategy may also insert, at random places, layers whose
output rows depend on other rows, which a re-alignment pass must never run on gathered rows:

    batchnorm_train  BatchNorm2d / BatchNorm1d in training mode (batch statistics)
    softmax_dim0     torch.softmax(x, 0)
    batch_reshape    x.reshape(1, -1), maybe an activation, then x.reshape(-1, *shape)
    flip_dim0        torch.flip(x, [0])
    rowmix           rowmix(x), a function that torch.fx.wrap keeps opaque

`Drawn.unshareable` names the kinds inserted. Training-mode batch norm needs more than one value
per channel, so `Drawn.min_batch` is 2 when it is present (else 0): tests must not run such a
model on fewer rows. Its forward also updates the running statistics, which its training-mode
output never reads.

A `Net` keeps its structure as data: `plan`, a list of `Step`s, and `layers`, an nn.ModuleList.
Its forward loops over the plan, and torch.fx.symbolic_trace unrolls that loop into a
straight-line graph. Shapes are tiny (1 to 6 channels, 4 to 8 pixels a side, 2 to 16 features)
and weights come from a seed drawn with the structure, so a failing example reproduces exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

UNSHAREABLE_KINDS = ("batchnorm_train", "softmax_dim0", "batch_reshape", "flip_dim0", "rowmix")

EXAMPLE_BATCH = 2


def rowmix(x: torch.Tensor) -> torch.Tensor:
    """Adds the mean of all rows to each row: an op no rule table knows."""
    return x + x.mean(0, keepdim=True)


torch.fx.wrap("rowmix")


class Step(NamedTuple):
    """One op of a Net's plan: `op` applied to earlier values, numbered from the input (0)."""

    op: str
    inputs: tuple[int, ...]
    layer: int | None = None  # index into Net.layers, for op "module"
    shape: tuple[int, ...] = ()  # non-batch shape, for op "reshape_rows"

    def __str__(self) -> str:
        op = f"layers[{self.layer}]" if self.op == "module" else self.op
        args = [f"v{i}" for i in self.inputs] + ([f"shape={self.shape}"] if self.shape else [])
        return f"{op}({', '.join(args)})"


_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "module": lambda layers, step, x: layers[step.layer](x),
    "torch.relu": lambda layers, step, x: torch.relu(x),
    "F.relu": lambda layers, step, x: F.relu(x),
    "Tensor.relu": lambda layers, step, x: x.relu(),
    "F.gelu": lambda layers, step, x: F.gelu(x),
    "torch.flatten": lambda layers, step, x: torch.flatten(x, 1),
    "Tensor.flatten": lambda layers, step, x: x.flatten(1),
    "add": lambda layers, step, a, b: a + b,
    "cat": lambda layers, step, *xs: torch.cat(xs, dim=1),
    "softmax_dim0": lambda layers, step, x: torch.softmax(x, 0),
    "flip_dim0": lambda layers, step, x: torch.flip(x, [0]),
    "rowmix": lambda layers, step, x: rowmix(x),
    "reshape_flat": lambda layers, step, x: x.reshape(1, -1),
    "reshape_rows": lambda layers, step, x: x.reshape(-1, *step.shape),
}


def _run(step: Step, layers, values: list[torch.Tensor]) -> torch.Tensor:
    return _OPS[step.op](layers, step, *(values[i] for i in step.inputs))


class Net(nn.Module):
    """A network whose forward is the straight-line program `plan` over `layers`."""

    def __init__(self, plan: list[Step], layers: list[nn.Module]):
        super().__init__()
        self.plan = plan
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for step in self.plan:
            values.append(_run(step, self.layers, values))
        return values[-1]

    def extra_repr(self) -> str:
        return "\n".join(f"plan[{i}]: v{i + 1} = {step}" for i, step in enumerate(self.plan))


@dataclass(frozen=True, eq=False)
class Drawn:
    """A drawn network, an example input with EXAMPLE_BATCH rows, and what a test must know."""

    model: nn.Module
    example: torch.Tensor
    unshareable: tuple[str, ...] = ()  # kinds from UNSHAREABLE_KINDS, in plan order
    min_batch: int = 0  # the fewest rows the model accepts

    def __repr__(self) -> str:
        return (
            f"Drawn(example shape={tuple(self.example.shape)}, unshareable={self.unshareable}, "
            f"min_batch={self.min_batch}, model={self.model})"
        )


def batch_sizes(min_size: int = 0, max_size: int = 3) -> st.SearchStrategy[int]:
    """Row counts for running a drawn network; pass min_size=drawn.min_batch."""
    return st.integers(min_size, max_size)


def make_input(drawn: Drawn, batch: int, seed: int = 0) -> torch.Tensor:
    """A random input with `batch` rows and the example's non-batch shape."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *drawn.example.shape[1:]), generator=generator)


class _Builder:
    """Appends steps to a plan, running each on the example so every value's shape is known."""

    def __init__(self, example: torch.Tensor):
        self.plan: list[Step] = []
        self.layers: list[nn.Module] = []
        self.training_layers: list[nn.Module] = []
        self.values = [example]

    @property
    def last(self) -> int:
        return len(self.values) - 1

    def shape(self, value: int) -> tuple[int, ...]:
        return tuple(self.values[value].shape[1:])

    def op(self, name: str, *inputs: int, shape: tuple[int, ...] = ()) -> int:
        return self._append(Step(name, inputs, shape=shape))

    def module(self, layer: nn.Module, x: int) -> int:
        self.layers.append(layer)
        return self._append(Step("module", (x,), layer=len(self.layers) - 1))

    def _append(self, step: Step) -> int:
        self.plan.append(step)
        self.values.append(_run(step, self.layers, self.values))
        return self.last


# Blocks. Each reads value `x` (the newest value, for those without an `x` parameter), appends
# its steps, and returns the index of its output value.


def _relu(draw, b: _Builder, x: int) -> int:
    style = draw(st.sampled_from(("nn.ReLU", "torch.relu", "F.relu", "Tensor.relu")))
    return b.module(nn.ReLU(), x) if style == "nn.ReLU" else b.op(style, x)


def _gelu(draw, b: _Builder, x: int) -> int:
    style = draw(st.sampled_from(("nn.GELU", "F.gelu")))
    return b.module(nn.GELU(), x) if style == "nn.GELU" else b.op(style, x)


def _relu_block(draw, b: _Builder) -> int:
    return _relu(draw, b, b.last)


def _gelu_block(draw, b: _Builder) -> int:
    return _gelu(draw, b, b.last)


def _random_batchnorm(channels: int, dims: int) -> nn.Module:
    """Batch norm over 2-D or 4-D input with random statistics and affine parameters, so that
    in eval mode it is not the identity."""
    norm = nn.BatchNorm2d(channels) if dims == 4 else nn.BatchNorm1d(channels)
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    return norm


def _conv(draw, b: _Builder, x: int, out_channels: int, kernel: int, stride: int = 1) -> int:
    """A convolution that keeps the spatial size at stride 1 and halves it (rounding up) at 2."""
    in_channels = b.shape(x)[0]
    bias = draw(st.booleans())
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=bias)
    return b.module(conv, x)


def _conv_block(draw, b: _Builder) -> int:
    _, height, width = b.shape(b.last)
    out_channels = draw(st.integers(1, 6))
    kernel = draw(st.sampled_from((1, 3)))
    stride = draw(st.sampled_from((1, 2) if min(height, width) >= 4 else (1,)))
    return _conv(draw, b, b.last, out_channels, kernel, stride)


def _batchnorm_block(draw, b: _Builder) -> int:
    return b.module(_random_batchnorm(b.shape(b.last)[0], dims=4).eval(), b.last)


def _pool_block(draw, b: _Builder) -> int:
    pool = draw(st.sampled_from((nn.MaxPool2d, nn.AvgPool2d)))
    return b.module(pool(2), b.last)


def _residual_conv_block(draw, b: _Builder) -> int:
    skip = b.last
    channels = b.shape(skip)[0]
    kernel = draw(st.sampled_from((1, 3)))
    x = _conv(draw, b, skip, channels, kernel)
    x = b.module(_random_batchnorm(channels, dims=4).eval(), x)
    x = _relu(draw, b, x)
    x = _conv(draw, b, x, channels, kernel)
    return b.op("add", x, skip)


def _inception_branch(draw, b: _Builder, x: int) -> int:
    """A 1x1 conv, a 3x3 conv, or a size-keeping 3x3 pool then a 1x1 conv; 1 or 2 channels out."""
    kind = draw(st.sampled_from(("conv1", "conv3", "pool")))
    if kind == "pool":
        pool = draw(st.sampled_from((nn.MaxPool2d, nn.AvgPool2d)))
        x = b.module(pool(3, stride=1, padding=1), x)
    kernel = 3 if kind == "conv3" else 1
    return _conv(draw, b, x, draw(st.integers(1, 2)), kernel)


def _inception_block(draw, b: _Builder) -> int:
    x = b.last
    branches = [_inception_branch(draw, b, x) for _ in range(draw(st.integers(2, 3)))]
    return b.op("cat", *branches)


def _image_block(draw, b: _Builder) -> int:
    blocks = [_conv_block, _batchnorm_block, _relu_block, _gelu_block]
    blocks += [_residual_conv_block, _inception_block]
    _, height, width = b.shape(b.last)
    if height % 2 == 0 and width % 2 == 0:
        blocks.append(_pool_block)
    return draw(st.sampled_from(blocks))(draw, b)


def _flatten(draw, b: _Builder) -> int:
    style = draw(st.sampled_from(("nn.Flatten", "torch.flatten", "Tensor.flatten")))
    return b.module(nn.Flatten(), b.last) if style == "nn.Flatten" else b.op(style, b.last)


def _linear(draw, b: _Builder, x: int, out_features: int) -> int:
    bias = draw(st.booleans())
    return b.module(nn.Linear(b.shape(x)[0], out_features, bias=bias), x)


def _linear_block(draw, b: _Builder) -> int:
    return _linear(draw, b, b.last, draw(st.integers(2, 16)))


def _residual_linear_block(draw, b: _Builder) -> int:
    x = b.last
    return b.op("add", x, _linear(draw, b, x, b.shape(x)[0]))


def _concat_linear_block(draw, b: _Builder) -> int:
    x = b.last
    branches = [_linear(draw, b, x, draw(st.integers(1, 8))) for _ in range(2)]
    return b.op("cat", *branches)


def _feature_block(draw, b: _Builder) -> int:
    blocks = [_linear_block, _relu_block, _gelu_block, _residual_linear_block, _concat_linear_block]
    return draw(st.sampled_from(blocks))(draw, b)


def _unshareable_block(draw, b: _Builder, kind: str) -> int:
    x = b.last
    shape = b.shape(x)
    if kind == "batchnorm_train":
        norm = _random_batchnorm(shape[0], dims=len(shape) + 1)
        b.training_layers.append(norm)
        return b.module(norm, x)
    if kind == "batch_reshape":
        flat = b.op("reshape_flat", x)
        if draw(st.booleans()):
            flat = draw(st.sampled_from((_relu, _gelu)))(draw, b, flat)
        return b.op("reshape_rows", flat, shape=shape)
    return b.op(kind, x)


def _slots(draw, allow_unshareable: bool) -> tuple[list[str], list[str]]:
    """The blocks of each stage, in order: "block" for a drawn block, else an unshareable kind."""
    image = ["block"] * draw(st.integers(1, 6))
    feature = ["block"] * draw(st.integers(1, 4))
    kinds = st.lists(st.sampled_from(UNSHAREABLE_KINDS), unique=True)
    for kind in draw(kinds) if allow_unshareable else []:
        stage = image if draw(st.booleans()) else feature
        stage.insert(draw(st.integers(0, len(stage))), kind)
    return image, feature


def _stage(draw, b: _Builder, slots: list[str], block: Callable) -> None:
    for slot in slots:
        if slot == "block":
            block(draw, b)
        else:
            _unshareable_block(draw, b, slot)


@st.composite
def networks(draw, allow_unshareable: bool = False) -> Drawn:
    """Draws a random image-then-feature network and its example input; see the module doc."""
    image_slots, feature_slots = _slots(draw, allow_unshareable)
    shape = (draw(st.integers(1, 6)), draw(st.integers(4, 8)), draw(st.integers(4, 8)))
    seed = draw(st.integers(0, 2**32 - 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        example = torch.randn(EXAMPLE_BATCH, *shape)
        b = _Builder(example)
        _stage(draw, b, image_slots, _image_block)
        _flatten(draw, b)
        _stage(draw, b, feature_slots, _feature_block)
    model = Net(b.plan, b.layers).eval()
    for layer in b.training_layers:
        layer.train()
    unshareable = tuple(slot for slot in image_slots + feature_slots if slot != "block")
    min_batch = 2 if "batchnorm_train" in unshareable else 0
    return Drawn(model, example, unshareable, min_batch)
