"""Small hand-written models shared by the unit tests."""

import torch
import torch.nn as nn

import graft_fx


class ResidualNet(nn.Module):
    """conv-bn-relu, a residual block, pooling, then a small classifier: a DAG with clean cuts."""

    def __init__(self, channels: int = 4, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Linear(4 * channels, 8), nn.GELU(), nn.Linear(8, classes))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.block(x) + x)
        return self.head(self.pool(x).flatten(1))


def example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6)


def fragments(model: nn.Module, cut_indices: list[int]):
    """(heads, tails) of ``model`` cut at the given indices into its cut points."""
    cuts = graft_fx.cut_points(model, example())
    pairs = [graft_fx.split(model, cuts[i], example()) for i in cut_indices]
    return [h for h, _ in pairs], [t for _, t in pairs]


def seeded(model_cls=ResidualNet, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = model_cls(**kwargs).eval()
    with torch.no_grad():  # non-trivial batch norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


def realign_all(fragments, example_inputs=None, **kwargs):
    """``graft_fx.realign`` with the cost rule off: small test models share every layer that can
    be shared, so the tests exercise gathers and narrows that real models pay for."""
    return graft_fx.realign(fragments, example_inputs, min_flops_per_byte=0, **kwargs)


def assert_gradients_match(run, modules, inputs) -> None:
    """``run(*inputs)`` (one output per module) backpropagates into every module's parameters
    what running each module on its own input does. The loss weighs fragment i by i + 1, so a
    gradient sent to another fragment's parameters shows."""
    def backward(outputs):
        for m in modules:
            m.zero_grad()
        sum((i + 1) * out.sum() for i, out in enumerate(outputs)).backward()
        return [p.grad.clone() for m in modules for p in m.parameters()]

    got = backward(run(*inputs))
    want = backward([m(x) for m, x in zip(modules, inputs)])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
