"""Hypothesis strategies that draw small random PyTorch networks for property tests.

`networks()` draws a `Drawn`: a `Net` and an example input with two rows. A network is an image
stage (N, C, H, W tensors; 1 to 6 blocks), a flatten, and a feature stage (N, F tensors; 1 to 4
blocks):

    image blocks    conv, batch norm (eval, running statistics), layer norm (over C, H, W, over
                    W, or F.layer_norm(x, x.shape[1:])), group norm, relu, gelu, 2x2 pool,
                    residual (conv-bn-relu-conv + skip), pre-activation residual (relu_(x), then
                    conv(x) + x, which reads the mutated x), inception (2 or 3 parallel
                    branches, cat on dim 1), channel slice x[:, : x.shape[1] // 2], pair reshape
                    x.reshape(x.shape[0], 2, -1).reshape(x.shape) (or with the last size
                    computed from x.shape), batch fold (x.reshape(1, -1), maybe an activation,
                    x.reshape(-1, *row_shape): the batch folded into dim 1, each sample's
                    elements still contiguous)
    flatten         nn.Flatten, torch.flatten, Tensor.flatten, x.view(x.size(0), -1) or
                    x.view(x.size(0), x.size(1) * x.size(2) * x.size(3)) (when x is contiguous),
                    x.reshape(x.shape[0], -1), x.reshape(x.shape[0], 2, -1).flatten(1)
    feature blocks  linear, batch norm (eval), layer norm, relu, gelu, residual (x + linear(x)),
                    pre-activation residual, concat of two linears on dim 1, slice, pair
                    reshape, batch fold

Call styles are drawn too (nn.ReLU, torch.relu, F.relu, Tensor.relu; nn.Flatten, torch.flatten,
Tensor.flatten; `+`; torch.cat), so traced graphs mix call_module, call_function and call_method
nodes. In-place ops appear at random places: activations (nn.ReLU(inplace=True), Tensor.relu_,
F.relu(x, inplace=True)) and residual adds written `y.add_(x)` or `x.add_(y)` (the latter
mutates the block's input, which may be the network's input or a view). Every op of these
networks is batch-separable: output row i depends on input row i only. With
`inplace_on_views=False`, in-place ops (hooks included) write only to values that are not views.

With `allow_unshareable=True` the strategy may also insert, at random places, up to two layers
whose output rows depend on other rows (or on the number of rows), which a re-alignment pass
must never run on gathered rows. Each is placed in the chain (x = m(x)), in a residual branch
(x + m(x)) or in a concatenated branch (cat([x, m(x)], 1)):

    batchnorm_train        BatchNorm2d / BatchNorm1d in training mode (batch statistics)
    batchnorm_batch_stats  BatchNorm with track_running_stats=False, in eval mode: it still
                           normalises with the batch's statistics
    softmax_dim0           softmax over dim 0 (torch.softmax, F.softmax, Tensor.softmax)
    flip_dim0              torch.flip(x, [0]) or x.flip(0)
    rowmix                 rowmix(x), a function that torch.fx.wrap keeps opaque
    center_dim0            x - x.mean(0, keepdim=True)
    div_batch              x / x.shape[0]
    full_like_batch        torch.full_like(x, x.size(0)), added to x

All but the batch norms are `Mixer` modules whose forward is that one op, so the ATen nodes of
a captured graph that belong to one carry its path in ``nn_module_stack``; `Drawn.mixers` lists
the indices (into `Net.layers`) of all of them, batch norms included. `Drawn.unshareable` names
the kinds inserted. Batch norm with batch statistics needs more than one value per channel, so
`Drawn.min_batch` is 2 when one is present; it is 1 when a reshape to (x.shape[0], ..., -1) is
(eager PyTorch refuses that -1 with no rows), else 0: tests must not run a model on fewer
rows. A training-mode batch norm's forward also updates its running statistics, which its
output never reads.

Forward hooks sit on some shareable leaf layers (nn.Conv2d, nn.Linear, norms, nn.ReLU, ...):
`output * 2`, `output - 0.5`, an in-place `output.mul_(2)` returning None, or a pre-hook that
halves the input; torch.fx.symbolic_trace keeps those (the traced GraphModule calls the same
hooked module objects). A hook on the network itself (`output * 2`) is dropped by symbolic_trace,
so `Drawn.traceable` is False when the network has one: only traceable networks may be handed
over as traced GraphModules.

A `Net` keeps its structure as data: `plan`, a list of `Step`s, and `layers`, an nn.ModuleList.
Its forward loops over the plan, and torch.fx.symbolic_trace unrolls that loop into a
straight-line graph. `Net.cuts()` are the values after which a suffix of the plan reads nothing
older, and `Net.suffix(k)` is that suffix as a Net of its own over the same layer objects (and
the same network hook): a fragment a user would write by hand. Shapes are tiny (1 to 6
channels, 4 to 8 pixels a side, 2 to 16 features) and weights come from a seed drawn with the
structure, so a failing example reproduces exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

UNSHAREABLE_KINDS = (
    "batchnorm_train", "batchnorm_batch_stats", "softmax_dim0", "flip_dim0", "rowmix", "center_dim0",
    "div_batch", "full_like_batch",
)
BATCH_STATISTICS = ("batchnorm_train", "batchnorm_batch_stats")
PLACEMENTS = ("chain", "add", "cat")

EXAMPLE_BATCH = 2


def rowmix(x: torch.Tensor) -> torch.Tensor:
    """Adds the mean of all rows to each row: an op no rule table knows."""
    return x + x.mean(0, keepdim=True)


torch.fx.wrap("rowmix")


_MIXES: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {
    ("softmax_dim0", "torch.softmax"): lambda x: torch.softmax(x, 0),
    ("softmax_dim0", "F.softmax"): lambda x: F.softmax(x, dim=0),
    ("softmax_dim0", "Tensor.softmax"): lambda x: x.softmax(0),
    ("flip_dim0", "torch.flip"): lambda x: torch.flip(x, [0]),
    ("flip_dim0", "Tensor.flip"): lambda x: x.flip(0),
    ("rowmix", "wrapped"): lambda x: rowmix(x),
    ("center_dim0", "mean"): lambda x: x - x.mean(0, keepdim=True),
    ("div_batch", "shape"): lambda x: x / x.shape[0],
    ("full_like_batch", "size"): lambda x: torch.full_like(x, x.size(0)),
}


class Mixer(nn.Module):
    """One batch-mixing op (see the module doc) as a module of its own."""

    def __init__(self, kind: str, style: str):
        super().__init__()
        self.kind = kind
        self.style = style

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MIXES[(self.kind, self.style)](x)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.style}"


# Hooks are module-level functions, so that deep copies of a network share them.


def double_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output * 2


def shift_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output - 0.5


def double_output_inplace(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    output.mul_(2)


def halve_input(module: nn.Module, inputs: tuple) -> tuple:
    return (inputs[0] * 0.5,)


FORWARD_HOOKS = {"double": double_output, "shift": shift_output, "double_inplace": double_output_inplace}
PRE_HOOKS = {"halve_input": halve_input}
HOOK_KINDS = (*FORWARD_HOOKS, *PRE_HOOKS)


class Step(NamedTuple):
    """One op of a Net's plan: `op` applied to earlier values, numbered from the input (0)."""

    op: str
    inputs: tuple[int, ...]
    layer: int | None = None  # index into Net.layers, for op "module"
    shape: tuple[int, ...] = ()  # non-batch shape, for op "unfold_batch"

    def __str__(self) -> str:
        op = f"layers[{self.layer}]" if self.op == "module" else self.op
        args = [f"v{i}" for i in self.inputs] + ([f"shape={self.shape}"] if self.shape else [])
        return f"{op}({', '.join(args)})"

    def shifted(self, k: int) -> "Step":
        return self._replace(inputs=tuple(i - k for i in self.inputs))


_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "module": lambda layers, step, x: layers[step.layer](x),
    "torch.relu": lambda layers, step, x: torch.relu(x),
    "F.relu": lambda layers, step, x: F.relu(x),
    "Tensor.relu": lambda layers, step, x: x.relu(),
    "Tensor.relu_": lambda layers, step, x: x.relu_(),
    "F.relu_inplace": lambda layers, step, x: F.relu(x, inplace=True),
    "F.gelu": lambda layers, step, x: F.gelu(x),
    "torch.flatten": lambda layers, step, x: torch.flatten(x, 1),
    "Tensor.flatten": lambda layers, step, x: x.flatten(1),
    "view_flat": lambda layers, step, x: x.view(x.size(0), -1),
    "view_flat_sizes": lambda layers, step, x: x.view(x.size(0), x.size(1) * x.size(2) * x.size(3)),
    "reshape_flat": lambda layers, step, x: x.reshape(x.shape[0], -1),
    "pair_flat": lambda layers, step, x: x.reshape(x.shape[0], 2, -1).flatten(1),
    "pair_flat_sizes": lambda layers, step, x: x.reshape(x.shape[0], 2, x.shape[1] // 2).flatten(1),
    "pair_reshape": lambda layers, step, x: x.reshape(x.shape[0], 2, -1).reshape(x.shape),
    "pair_reshape_sizes": lambda layers, step, x: x.reshape(
        x.shape[0], 2, x.shape[1] * x.shape[2] * x.shape[3] // 2).reshape(x.shape),
    "slice_half": lambda layers, step, x: x[:, : x.shape[1] // 2],
    "layer_norm_sizes": lambda layers, step, x: F.layer_norm(x, x.shape[1:]),
    "fold_batch": lambda layers, step, x: x.reshape(1, -1),
    "unfold_batch": lambda layers, step, x: x.reshape(-1, *step.shape),
    "add": lambda layers, step, a, b: a + b,
    "add_": lambda layers, step, a, b: a.add_(b),
    "cat": lambda layers, step, *xs: torch.cat(xs, dim=1),
}


NEEDS_A_ROW = frozenset({"view_flat", "reshape_flat", "pair_flat", "pair_reshape"})
"""Ops that reshape to (x.shape[0], ..., -1): with no rows the -1 is ambiguous, and eager
PyTorch raises."""


def _run(step: Step, layers, values: list[torch.Tensor]) -> torch.Tensor:
    return _OPS[step.op](layers, step, *(values[i] for i in step.inputs))


class Net(nn.Module):
    """A network whose forward is the straight-line program `plan` over `layers`.

    `output_hooks` names forward hooks (from FORWARD_HOOKS) registered on the network itself.
    """

    def __init__(self, plan: list[Step], layers: list[nn.Module] | nn.ModuleList, output_hooks: tuple[str, ...] = ()):
        super().__init__()
        self.plan = list(plan)
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.output_hooks = tuple(output_hooks)
        self.training = self.layers.training = False  # containers' modes mean nothing; layers keep theirs
        for name in self.output_hooks:
            self.register_forward_hook(FORWARD_HOOKS[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for step in self.plan:
            values.append(_run(step, self.layers, values))
        return values[-1]

    def cuts(self) -> list[int]:
        """Values k (0 = the input, len(plan) = the output) such that no step after value k
        reads a value older than k, and value k holds the batch in dim 0 (it is not folded by
        "fold_batch"): `suffix(k)` computes the rest of the network from value k."""
        oldest_read_after = [len(self.plan)] * (len(self.plan) + 1)
        for k in range(len(self.plan) - 1, -1, -1):
            oldest_read_after[k] = min(oldest_read_after[k + 1], *self.plan[k].inputs)
        folded: set[int] = set()
        for j, step in enumerate(self.plan):
            if step.op == "fold_batch" or step.op != "unfold_batch" and folded & set(step.inputs):
                folded.add(j + 1)
        return [k for k in range(len(self.plan) + 1) if oldest_read_after[k] >= k and k not in folded]

    def suffix(self, k: int) -> "Net":
        """The steps after value k, as a Net over the same layer objects and network hooks."""
        assert k in self.cuts(), f"v{k} is not a cut of this network"
        return Net([s.shifted(k) for s in self.plan[k:]], self.layers, self.output_hooks)

    def prefix(self, k: int) -> "Net":
        """The steps up to value k (without the network's hooks): what feeds `suffix(k)`."""
        return Net(self.plan[:k], self.layers)

    def extra_repr(self) -> str:
        lines = [f"plan[{i}]: v{i + 1} = {step}" for i, step in enumerate(self.plan)]
        for i, layer in enumerate(self.layers):
            hooks = [f"{h.__name__} (pre)" for h in layer._forward_pre_hooks.values()]
            hooks += [h.__name__ for h in layer._forward_hooks.values()]
            lines += [f"hooks on layers[{i}]: {', '.join(hooks)}"] * bool(hooks)
        return "\n".join(lines + [f"output hooks: {self.output_hooks}"] * bool(self.output_hooks))


@dataclass(frozen=True, eq=False)
class Drawn:
    """A drawn network, an example input with EXAMPLE_BATCH rows, and what a test must know."""

    model: Net
    example: torch.Tensor
    unshareable: tuple[str, ...] = ()  # kinds from UNSHAREABLE_KINDS, in the order drawn
    min_batch: int = 0  # the fewest rows the model accepts: 2 with batch statistics, 1 with a
    # reshape to (x.shape[0], ..., -1) (see NEEDS_A_ROW), else 0
    mixers: frozenset[int] = frozenset()  # indices into model.layers of the unshareable layers
    traceable: bool = True  # torch.fx.symbolic_trace(model) computes what the model computes
    features: frozenset[str] = frozenset()  # what the draw used (call styles, blocks, hooks)
    row_shapes: tuple[tuple[int, ...], ...] = ()  # the non-batch shape of every value of the plan

    def suffix_example(self, k: int, seed: int = 0) -> torch.Tensor:
        """A random input with EXAMPLE_BATCH rows for `model.suffix(k)`."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((EXAMPLE_BATCH, *self.row_shapes[k]), generator=generator)

    def mixer_paths(self) -> frozenset[str]:
        """The module paths (as in nn_module_stack) of the unshareable layers."""
        return frozenset(f"layers.{i}" for i in self.mixers)

    def __repr__(self) -> str:
        return (
            f"Drawn(example shape={tuple(self.example.shape)}, unshareable={self.unshareable}, "
            f"min_batch={self.min_batch}, traceable={self.traceable}, mixers={sorted(self.mixers)}, "
            f"model={self.model})"
        )


def make_input(drawn: Drawn, batch: int, seed: int = 0) -> torch.Tensor:
    """A random input with `batch` rows and the example's non-batch shape."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *drawn.example.shape[1:]), generator=generator)


class _Builder:
    """Appends steps to a plan, running each on the example so every value's shape is known.

    In-place steps mutate earlier values of `values`; only their shapes are read, which in-place
    ops keep.
    """

    def __init__(self, example: torch.Tensor, inplace_on_views: bool = True):
        self.inplace_on_views = inplace_on_views
        self.plan: list[Step] = []
        self.layers: list[nn.Module] = []
        self.training_layers: list[nn.Module] = []
        self.hookable: list[tuple[int, int]] = []  # (layer, its output value): shareable leaf layers
        self.mixers: set[int] = set()
        self.features: set[str] = set()
        self.values = [example.clone()]

    @property
    def last(self) -> int:
        return len(self.values) - 1

    def shape(self, value: int) -> tuple[int, ...]:
        return tuple(self.values[value].shape[1:])

    def op(self, name: str, *inputs: int, shape: tuple[int, ...] = ()) -> int:
        self.features.add(name)
        return self._append(Step(name, inputs, shape=shape))

    def module(self, layer: nn.Module, x: int, hookable: bool = True) -> int:
        self.layers.append(layer)
        self.features.add(f"nn.{type(layer).__name__}")
        out = self._append(Step("module", (x,), layer=len(self.layers) - 1))
        if hookable:
            self.hookable.append((len(self.layers) - 1, out))
        return out

    def is_view(self, value: int) -> bool:
        return self.values[value]._base is not None

    def may_mutate(self, value: int) -> bool:
        """Whether an in-place op may write to ``value``: any value, or only values that are not
        views when the network must not mutate views (see ``networks``)."""
        return self.inplace_on_views or not self.is_view(value)

    def mixer(self, layer: nn.Module, x: int) -> int:
        self.mixers.add(len(self.layers))
        return self.module(layer, x, hookable=False)

    def _append(self, step: Step) -> int:
        self.plan.append(step)
        self.values.append(_run(step, self.layers, self.values))
        return self.last


# Blocks. Each reads value `x` (the newest value, for those without an `x` parameter), appends
# its steps, and returns the index of its output value.


INPLACE_RELUS = ("nn.ReLU(inplace)", "Tensor.relu_", "F.relu_inplace")


def _relu(draw, b: _Builder, x: int) -> int:
    styles = ("nn.ReLU", "torch.relu", "F.relu", "Tensor.relu") + INPLACE_RELUS * b.may_mutate(x)
    style = draw(st.sampled_from(styles))
    if style == "nn.ReLU(inplace)":
        b.features.add(style)
        return b.module(nn.ReLU(inplace=True), x)
    return b.module(nn.ReLU(), x) if style == "nn.ReLU" else b.op(style, x)


def _gelu(draw, b: _Builder, x: int) -> int:
    style = draw(st.sampled_from(("nn.GELU", "F.gelu")))
    return b.module(nn.GELU(), x) if style == "nn.GELU" else b.op(style, x)


def _relu_block(draw, b: _Builder) -> int:
    return _relu(draw, b, b.last)


def _gelu_block(draw, b: _Builder) -> int:
    return _gelu(draw, b, b.last)


def _add(draw, b: _Builder, y: int, skip: int) -> int:
    """y + skip, maybe in place: y.add_(skip) or skip.add_(y) (which mutates the skip)."""
    style = draw(st.sampled_from(("+",) + ("y.add_",) * b.may_mutate(y) + ("skip.add_",) * b.may_mutate(skip)))
    if style == "+":
        return b.op("add", y, skip)
    b.features.add(style)
    return b.op("add_", y, skip) if style == "y.add_" else b.op("add_", skip, y)


def _random_batchnorm(channels: int, dims: int, track_running_stats: bool = True) -> nn.Module:
    """Batch norm over 2-D or 4-D input with random statistics and affine parameters, so that
    in eval mode it is not the identity."""
    cls = nn.BatchNorm2d if dims == 4 else nn.BatchNorm1d
    norm = cls(channels, track_running_stats=track_running_stats)
    with torch.no_grad():
        if track_running_stats:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    return norm


def _randomized(norm: nn.Module) -> nn.Module:
    """A layer or group norm with random affine parameters."""
    with torch.no_grad():
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
    shape = b.shape(b.last)
    return b.module(_random_batchnorm(shape[0], dims=len(shape) + 1).eval(), b.last)


def _layernorm_block(draw, b: _Builder) -> int:
    shape = b.shape(b.last)
    style = draw(st.sampled_from(("all", "last", "sizes")))
    if style == "sizes":
        return b.op("layer_norm_sizes", b.last)
    b.features.add(f"layernorm_{style}")
    return b.module(_randomized(nn.LayerNorm(shape if style == "all" else shape[-1:])), b.last)


def _groupnorm_block(draw, b: _Builder) -> int:
    channels = b.shape(b.last)[0]
    groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
    return b.module(_randomized(nn.GroupNorm(groups, channels)), b.last)


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
    return _add(draw, b, x, skip)


def _preact_residual_block(draw, b: _Builder) -> int:
    """relu_(x), then layer(x) + x: the skip reads x after the in-place relu changed it."""
    x = b.last
    style = draw(st.sampled_from(INPLACE_RELUS))
    b.features.add("preact")
    if style == "nn.ReLU(inplace)":
        b.features.add(style)
    h = b.module(nn.ReLU(inplace=True), x) if style == "nn.ReLU(inplace)" else b.op(style, x)
    if len(b.shape(x)) == 3:
        y = _conv(draw, b, h, b.shape(x)[0], draw(st.sampled_from((1, 3))))
    else:
        y = _linear(draw, b, h, b.shape(x)[0])
    return _add(draw, b, y, x)


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


def _slice_block(draw, b: _Builder) -> int:
    return b.op("slice_half", b.last)


def _pair_block(draw, b: _Builder) -> int:
    """x.reshape(x.shape[0], 2, -1) (or with the last size computed from x.shape) and back to
    x's shape (to 2-D, flattened, in the feature stage): reshapes whose sizes are read from x."""
    op = "pair_reshape" if len(b.shape(b.last)) == 3 else "pair_flat"
    return b.op(op + draw(st.sampled_from(("", "_sizes"))), b.last)


def _fold_batch_block(draw, b: _Builder) -> int:
    """x.reshape(1, -1), maybe an activation, then x.reshape(-1, *row_shape): the batch is
    folded into dim 1, but each sample's elements stay contiguous, so it is batch-separable."""
    x = b.last
    shape = b.shape(x)
    flat = b.op("fold_batch", x)
    if draw(st.booleans()):
        flat = draw(st.sampled_from((_relu, _gelu)))(draw, b, flat)
    return b.op("unfold_batch", flat, shape=shape)


def _image_block(draw, b: _Builder) -> int:
    blocks = [_conv_block, _batchnorm_block, _relu_block, _gelu_block, _layernorm_block, _groupnorm_block]
    blocks += [_residual_conv_block, _preact_residual_block, _inception_block, _fold_batch_block]
    channels, height, width = b.shape(b.last)
    if height % 2 == 0 and width % 2 == 0:
        blocks.append(_pool_block)
    if channels >= 2:
        blocks.append(_slice_block)
    if channels * height * width % 2 == 0:
        blocks.append(_pair_block)
    if not b.may_mutate(b.last):
        blocks.remove(_preact_residual_block)
    return draw(st.sampled_from(blocks))(draw, b)


def _flatten(draw, b: _Builder) -> int:
    styles = ["nn.Flatten", "torch.flatten", "Tensor.flatten", "reshape_flat"]
    if b.values[b.last].is_contiguous():
        styles += ["view_flat", "view_flat_sizes"]
    if math.prod(b.shape(b.last)) % 2 == 0:
        styles.append("pair_flat")
    style = draw(st.sampled_from(styles))
    return b.module(nn.Flatten(), b.last) if style == "nn.Flatten" else b.op(style, b.last)


def _linear(draw, b: _Builder, x: int, out_features: int) -> int:
    bias = draw(st.booleans())
    return b.module(nn.Linear(b.shape(x)[0], out_features, bias=bias), x)


def _linear_block(draw, b: _Builder) -> int:
    return _linear(draw, b, b.last, draw(st.integers(2, 16)))


def _residual_linear_block(draw, b: _Builder) -> int:
    x = b.last
    return _add(draw, b, _linear(draw, b, x, b.shape(x)[0]), x)


def _concat_linear_block(draw, b: _Builder) -> int:
    x = b.last
    branches = [_linear(draw, b, x, draw(st.integers(1, 8))) for _ in range(2)]
    return b.op("cat", *branches)


def _feature_block(draw, b: _Builder) -> int:
    blocks = [_linear_block, _relu_block, _gelu_block, _residual_linear_block, _concat_linear_block]
    blocks += [_batchnorm_block, _layernorm_block, _preact_residual_block, _fold_batch_block]
    features = b.shape(b.last)[0]
    if features >= 2:
        blocks.append(_slice_block)
    if features % 2 == 0:
        blocks.append(_pair_block)
    if not b.may_mutate(b.last):
        blocks.remove(_preact_residual_block)
    return draw(st.sampled_from(blocks))(draw, b)


def _unshareable_layer(draw, b: _Builder, kind: str, x: int) -> int:
    shape = b.shape(x)
    if kind in BATCH_STATISTICS:
        norm = _random_batchnorm(shape[0], dims=len(shape) + 1, track_running_stats=kind == "batchnorm_train")
        if kind == "batchnorm_train":
            b.training_layers.append(norm)
        else:
            norm.eval()
        return b.mixer(norm, x)
    style = draw(st.sampled_from([s for k, s in _MIXES if k == kind]))
    b.features.add(f"{kind}:{style}")
    mixed = b.mixer(Mixer(kind, style), x)
    return b.op("add", x, mixed) if kind == "full_like_batch" else mixed


def _unshareable_block(draw, b: _Builder, kind: str) -> int:
    """An unshareable layer in the chain, in a residual branch, or in a concatenated branch."""
    x = b.last
    placement = draw(st.sampled_from(PLACEMENTS))
    b.features.add(f"placement:{placement}")
    y = _unshareable_layer(draw, b, kind, x)
    if placement == "add":
        return b.op("add", x, y)
    if placement == "cat":
        return b.op("cat", x, y)
    return y


def _slots(draw, allow_unshareable: bool) -> tuple[list[str], list[str]]:
    """The blocks of each stage, in order: "block" for a drawn block, else an unshareable kind."""
    image = ["block"] * draw(st.integers(1, 6))
    feature = ["block"] * draw(st.integers(1, 4))
    kinds = st.lists(st.sampled_from(UNSHAREABLE_KINDS), unique=True, max_size=2)
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


def _hooks(draw, b: _Builder) -> None:
    """Registers 0 to 3 hooks on shareable leaf layers."""
    if not b.hookable:
        return
    chosen = draw(st.lists(st.tuples(st.sampled_from(b.hookable), st.sampled_from(HOOK_KINDS)), max_size=3))
    for (layer, out), kind in chosen:
        if kind == "double_inplace" and not b.may_mutate(out):
            kind = "double"
        b.features.add(f"hook:{kind}")
        if kind in PRE_HOOKS:
            b.layers[layer].register_forward_pre_hook(PRE_HOOKS[kind])
        else:
            b.layers[layer].register_forward_hook(FORWARD_HOOKS[kind])


@st.composite
def networks(draw, allow_unshareable: bool = False, inplace_on_views: bool = True) -> Drawn:
    """Draws a random image-then-feature network and its example input; see the module doc.

    With ``inplace_on_views=False``, in-place ops (activations, ``add_``, in-place hooks) only
    write to values that are not views, so capture takes its cheaper path (no
    ``run_decompositions``); the properties draw both kinds."""
    image_slots, feature_slots = _slots(draw, allow_unshareable)
    shape = (draw(st.integers(1, 6)), draw(st.integers(4, 8)), draw(st.integers(4, 8)))
    seed = draw(st.integers(0, 2**32 - 1))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        example = torch.randn(EXAMPLE_BATCH, *shape)
        b = _Builder(example, inplace_on_views)
        _stage(draw, b, image_slots, _image_block)
        _flatten(draw, b)
        _stage(draw, b, feature_slots, _feature_block)
    _hooks(draw, b)
    output_hooks = ("double",) if draw(st.integers(0, 4)) == 3 else ()  # 0 would be the shrunk choice
    if output_hooks:
        b.features.add("hook:network")
    model = Net(b.plan, b.layers, output_hooks)
    for layer in model.layers:
        layer.train(layer in b.training_layers)
    unshareable = tuple(slot for slot in image_slots + feature_slots if slot != "block")
    min_batch = 2 if set(unshareable) & set(BATCH_STATISTICS) else 1 if b.features & NEEDS_A_ROW else 0
    return Drawn(model, example, unshareable, min_batch, frozenset(b.mixers), not output_hooks,
                 frozenset(b.features), tuple(b.shape(v) for v in range(len(b.values))))
