"""Regression tests: fragments that realign() once got wrong, one test per case.

Each test builds two or three fragments of one small model that reuse the same layers (a deep
tail, a shallow tail, and a deepcopy of the deep tail), realigns them with ``verify=False`` so
that the test itself does the checking, and compares ``rm(*inputs)`` with each fragment run alone
at uneven batch sizes, 0 and 1 included, and with absent (None) fragments. Most cases also run
with one fragment given as an ExportedProgram (dynamic batch) among nn.Modules. The cases:

  batch statistics   BatchNorm2d(track_running_stats=False) in eval mode normalises with the
                     batch's statistics: never shared, and the plan says why
  batch in dims      x.flip(1, 0) reverses the rows, with its dims given as varargs
  batch in sizes     layer_norm over x.size(), h / h.shape[0], full_like(h, h.size(0)) read the
                     batch size, which sharing would change
  in-place input     ReLU(inplace=True) first in the shared part, in a fragment that returns the
                     tensor it mutated
  sizes in slices    x[:, : x.shape[1] // 2] and x + pos[:, : n + 1] with n read from x: row-wise,
                     so the layers are shared, and exact
  hooks              a forward hook on a layer of one of two equal-weight twins runs, and the
                     hooked layer does not merge with the unhooked one
  state from sizes   an LSTM whose initial state is torch.zeros(layers, x.size(0), hidden)
  torch.fx.wrap      a wrapped row-wise function is shared, from plain modules and traced
                     GraphModules alike
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim, ExportedProgram

import graft_fx
from models import realign_all

# Per-fragment batch sizes, truncated to the number of fragments; None is an absent fragment.
SIZES = [(1, 0, 3), (2, 1, 0), (0, 0, 1), (None, 2, 1), (3, None, 0), (2, 2, 2)]
FORMS = ["modules", "exported"]


def eager(fragment: Any) -> Any:
    """The callable that runs ``fragment`` on its own."""
    return fragment.module() if isinstance(fragment, ExportedProgram) else fragment


def random_inputs(examples: Sequence[torch.Tensor], sizes: Sequence[int | None]) -> list:
    """One input per fragment shaped like its example, with ``sizes[f]`` rows (None: absent)."""
    g = torch.Generator().manual_seed(sum(b or 0 for b in sizes))
    return [None if b is None else torch.randn((b, *ex.shape[1:]), generator=g)
            for ex, b in zip(examples, sizes)]


def clone(x: torch.Tensor | None) -> torch.Tensor | None:
    """A fresh copy, so that a fragment mutating its input cannot affect the other run."""
    return None if x is None else x.clone()


def check(rm: graft_fx.RealignedModule, fragments: Sequence[Any], examples: Sequence[torch.Tensor],
          sizes: Sequence[int | None]) -> None:
    """``rm`` returns, for each fragment, exactly what the fragment returns alone (None if absent)."""
    inputs = random_inputs(examples, sizes)
    got = rm(*map(clone, inputs))
    assert len(got) == len(fragments)
    for f, (fragment, x) in enumerate(zip(fragments, inputs)):
        if x is None:
            assert got[f] is None, f"fragment {f} is absent at sizes {sizes} but returned a value"
            continue
        want = eager(fragment)(clone(x))
        torch.testing.assert_close(got[f], want, msg=lambda m: f"fragment {f} at sizes {sizes}: {m}")


def check_all(rm: graft_fx.RealignedModule, fragments: Sequence[Any], examples: Sequence[torch.Tensor]) -> None:
    """``check`` at every pattern of SIZES, cut to the number of fragments."""
    for sizes in SIZES:
        check(rm, fragments, examples, sizes[: len(fragments)])


def realign(fragments: Sequence[Any], examples: Sequence[torch.Tensor]) -> graft_fx.RealignedModule:
    return realign_all(list(fragments), list(examples), verify=False)


def exported(module: nn.Module, example: torch.Tensor) -> ExportedProgram:
    """``module`` exported at the ATen level with a dynamic batch dimension."""
    return torch.export.export(module, (example,), dynamic_shapes=({0: Dim("batch")},), strict=False)


def as_form(form: str, fragments: list, examples: list) -> list:
    """The fragments with the middle one exported ("exported") or traced ("traced"), else as is."""
    fragments = list(fragments)
    if form == "exported":
        fragments[1] = exported(fragments[1], examples[1])
    elif form == "traced":
        fragments[1] = fx.symbolic_trace(fragments[1])
    return fragments


def three_tails(deep: nn.Module, shallow: nn.Module, deep_row: tuple, shallow_row: tuple) -> tuple[list, list]:
    """(fragments, examples of batch 2): a deep tail, a shallow tail that shares the deep tail's
    suffix (the same module objects), and a deepcopy of the deep tail."""
    fragments = [deep.eval(), shallow.eval(), copy.deepcopy(deep).eval()]
    rows = [deep_row, shallow_row, deep_row]
    return fragments, [torch.randn(2, *row) for row in rows]


def cnn_tails(*body: nn.Module) -> tuple[list, list]:
    """Three tails of ``conv stem -> body -> classifier``: with the stem, without, and a copy."""
    stem = nn.Conv2d(3, 4, 3, padding=1)
    suffix = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    return three_tails(nn.Sequential(stem, suffix), suffix, (3, 6, 6), (4, 6, 6))


def conv() -> nn.Conv2d:
    return nn.Conv2d(4, 4, 3, padding=1)


def shares_with_others(rm: graft_fx.RealignedModule, f: int = 1) -> bool:
    """Fragment ``f`` (the one ``as_form`` converts) runs some segment together with others."""
    return any(f in s.fragments and len(s.fragments) > 1 for s in rm.plan.segments)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# batch statistics


@pytest.mark.parametrize("form", FORMS)
def test_batch_norm_with_batch_statistics_is_not_shared(form):
    fragments, examples = cnn_tails(nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), conv())
    fragments = as_form(form, fragments, examples)
    rm = realign(fragments, examples)
    check_all(rm, fragments, examples)
    assert any("batch" in u.reason for u in rm.plan.unshared), str(rm.plan)


# the batch among an op's dims or sizes


class Flip(nn.Module):
    def forward(self, x):
        return x.flip(1, 0)


class LayerNormWhole(nn.Module):
    def forward(self, x):
        return F.layer_norm(x, x.size())


class DivideByBatch(nn.Module):
    def forward(self, h):
        return h / h.shape[0]


class AddBatchSize(nn.Module):
    def forward(self, h):
        return h + torch.full_like(h, h.size(0))


@pytest.mark.parametrize("form", FORMS)
def test_flip_with_the_batch_among_vararg_dims(form):
    fragments, examples = cnn_tails(conv(), Flip(), nn.ReLU(), conv())
    fragments = as_form(form, fragments, examples)
    check_all(realign(fragments, examples), fragments, examples)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reader", [LayerNormWhole, DivideByBatch, AddBatchSize])
def test_ops_reading_the_batch_size(reader, form):
    fragments, examples = cnn_tails(conv(), reader(), nn.ReLU(), conv())
    fragments = as_form(form, fragments, examples)
    check_all(realign(fragments, examples), fragments, examples)


# in-place mutation of a returned tensor


class ReturnsMutated(nn.Module):
    """stem, then an in-place ReLU on the stem's output, then ``body``; returns (y, mutated x)."""

    def __init__(self, stem: nn.Module, relu: nn.ReLU, body: nn.Module):
        super().__init__()
        self.stem, self.relu, self.body = stem, relu, body

    def forward(self, x):
        x = self.stem(x)
        y = self.body(self.relu(x))
        return y, x


@pytest.mark.parametrize("form", FORMS)
def test_inplace_relu_on_a_returned_tensor(form):
    relu = nn.ReLU(inplace=True)
    body = nn.Sequential(conv(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    deep = ReturnsMutated(nn.Conv2d(3, 4, 3, padding=1), relu, body)
    shallow = ReturnsMutated(nn.Identity(), relu, body)
    fragments, examples = three_tails(deep, shallow, (3, 6, 6), (4, 6, 6))
    fragments = as_form(form, fragments, examples)
    check_all(realign(fragments, examples), fragments, examples)


# slices bounded by sizes


class HalfTokens(nn.Module):
    def forward(self, x):
        return x[:, : x.shape[1] // 2]


class AddPosition(nn.Module):
    """A ViT-style position embedding, longer than the sequences it is added to."""

    def __init__(self, max_tokens: int, dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, max_tokens, dim))

    def forward(self, x):
        n = x.shape[1] - 1
        return x + self.pos[:, : n + 1]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("slicer", [HalfTokens, lambda: AddPosition(10, 8)], ids=["half", "position"])
def test_slice_bounds_computed_from_sizes(slicer, form):
    suffix = nn.Sequential(slicer(), nn.LayerNorm(8), nn.Linear(8, 4))
    deep = nn.Sequential(nn.Linear(6, 8), suffix)
    fragments, examples = three_tails(deep, suffix, (5, 6), (5, 8))
    fragments = as_form(form, fragments, examples)
    rm = realign(fragments, examples)
    check_all(rm, fragments, examples)
    assert shares_with_others(rm), str(rm.plan)


# hooks


def double_output(module, inputs, output):
    return output * 2


@pytest.mark.parametrize("form", FORMS)
def test_forward_hook_on_one_of_two_twins(form):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), conv(), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    twin = copy.deepcopy(net)
    twin[2].register_forward_hook(double_output)
    twin_tail = nn.Sequential(*twin[2:])
    fragments = [net, twin, twin_tail]
    examples = [torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)]
    fragments = as_form(form, fragments, examples)
    rm = realign(fragments, examples)
    check_all(rm, fragments, examples)

    x = torch.randn(2, 3, 6, 6)
    plain, hooked, _ = rm(x, x, None)
    torch.testing.assert_close(hooked, eager(fragments[1])(x))
    assert not torch.allclose(plain, hooked), "the hook did not run, or the twins were merged"


# recurrent state built from sizes


class Recurrent(nn.Module):
    """stem, an LSTM from a zero state made without a device argument, a head on the last step."""

    def __init__(self, stem: nn.Module, lstm: nn.LSTM, head: nn.Linear):
        super().__init__()
        self.stem, self.lstm, self.head = stem, lstm, head

    def forward(self, x):
        x = self.stem(x)
        h0 = torch.zeros(self.lstm.num_layers, x.size(0), self.lstm.hidden_size)
        c0 = torch.zeros(self.lstm.num_layers, x.size(0), self.lstm.hidden_size)
        out, _ = self.lstm(x, (h0, c0))
        return self.head(out[:, -1])


@pytest.mark.parametrize("form", FORMS)
def test_lstm_with_zero_state_from_the_batch_size(form):
    lstm, head = nn.LSTM(6, 5, num_layers=2, batch_first=True), nn.Linear(5, 3)
    deep = Recurrent(nn.Linear(3, 6), lstm, head)
    shallow = Recurrent(nn.Identity(), lstm, head)
    fragments, examples = three_tails(deep, shallow, (4, 3), (4, 6))
    fragments = as_form(form, fragments, examples)
    check_all(realign(fragments, examples), fragments, examples)


# torch.fx.wrap


def scaled_residual(x, y):
    return x + 0.5 * y


torch.fx.wrap("scaled_residual")


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv()

    def forward(self, x):
        return scaled_residual(x, torch.relu(self.conv(x)))


@pytest.mark.parametrize("form", ["modules", "traced", "exported"])
def test_fx_wrapped_rowwise_function_is_shared(form):
    fragments, examples = cnn_tails(Residual(), nn.ReLU())
    fragments = as_form(form, fragments, examples)
    rm = realign(fragments, examples)
    check_all(rm, fragments, examples)
    assert shares_with_others(rm), str(rm.plan)


def test_traced_fragments_keep_the_wrapped_call():
    """The traced form above really holds scaled_residual as an opaque call."""
    fragments, _ = cnn_tails(Residual(), nn.ReLU())
    traced = fx.symbolic_trace(fragments[1])
    assert any(n.target is scaled_residual for n in traced.graph.nodes)
