"""Padded batching: bucket lists, padding rows that never reach an output, the fragments that
padding would change refused, and compiled static shapes that stop recompiling."""

import itertools

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.nn as nn
from torch._dynamo.utils import counters
from torch.export import Dim

import graft_fx
from graft_fx import GraftError
from graft_fx.buckets import POWERS_OF_TWO, bucketed, check_buckets, most_rows, pad_rows
from graft_fx.realign import PaddedRealignedModule
from graft_fx.testing import assert_equivalent, random_inputs
from models import realign_all

BUCKETS = (1, 2, 4)


def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 4)


class Tail(nn.Module):
    """A linear layer and a GELU on rows of shape (L, 4); ``layout`` says how it returns them:
    rows (B, L, 4), transposed (L, B, 4), folded (B * L, 4) beside a constant, or after writing
    a ReLU into its input in place."""

    def __init__(self, layer: nn.Linear, layout: str = "rows"):
        super().__init__()
        self.layer, self.layout = layer, layout

    def forward(self, x):
        if self.layout == "in_place":
            torch.relu_(x)
        y = torch.nn.functional.gelu(self.layer(x))
        if self.layout == "transposed":
            return y.transpose(0, 1)
        if self.layout == "folded":
            return {"rows": y.reshape(-1, 4), "weight": self.layer.weight}
        return y


class TwoInputs(nn.Module):
    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.layer = layer

    def forward(self, x, y):
        return self.layer(x) * y


def example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4)


@pytest.fixture(scope="module")
def padded():
    """Four fragments sharing one layer, returning their rows in every layout."""
    layer = linear()
    tails = [Tail(layer, layout) for layout in ("rows", "transposed", "folded", "in_place")]
    return realign_all(tails, [example() for _ in tails], buckets=BUCKETS)


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


# --- the bucket list --------------------------------------------------------------------------


@pytest.mark.parametrize("buckets", [[], [0, 1], [-2], [2, 1], [1, 1], [True, 2], [1.5, 2], ["4"]])
def test_check_buckets_refuses_what_is_not_increasing_positive_ints(buckets):
    with pytest.raises(GraftError, match="expected positive batch sizes in increasing order"):
        check_buckets(buckets)


def test_check_buckets_returns_a_tuple():
    assert check_buckets([1, 3, 8]) == (1, 3, 8)
    assert check_buckets(POWERS_OF_TWO) == POWERS_OF_TWO


@pytest.mark.parametrize("buckets", [[np.int64(1), np.int32(4)], np.array([1, 4]), range(1, 5, 3)],
                         ids=["numpy-ints", "numpy-array", "range"])
def test_check_buckets_takes_any_integers_and_returns_plain_ints(buckets):
    out = check_buckets(buckets)
    assert out == (1, 4) and all(type(b) is int for b in out)


@pytest.mark.parametrize("buckets", [4, np.int64(4), "1,2,4", b"1,2", {1, 2}, {1: 1}, None],
                         ids=["int", "numpy-int", "str", "bytes", "set", "dict", "none"])
def test_check_buckets_refuses_what_is_no_sequence_and_says_what_to_pass(buckets):
    with pytest.raises(GraftError, match=r"expected a sequence of batch sizes such as \[1, 2, 4, 8\] "
                                         r"\(the CLI's pow2 is graft_fx.buckets.POWERS_OF_TWO\)"):
        check_buckets(buckets)


@pytest.mark.parametrize("buckets, why", [([], "the list is empty"), ([1.5, 2], "1.5 is a float, not an integer"),
                                          ([True], "True is a bool"), ([2, 0], "0 is below 1"),
                                          ([np.int64(4), 2], r"buckets=\[4, 2\].*2 does not exceed the 4 before it")])
def test_check_buckets_says_which_size_is_wrong(buckets, why):
    with pytest.raises(GraftError, match=why):
        check_buckets(buckets)


def test_realign_refuses_a_lone_number_as_buckets():
    """Found by review: ``buckets=4`` raised a bare TypeError from deep inside."""
    with pytest.raises(GraftError, match="expected a sequence of batch sizes"):
        graft_fx.realign([Tail(linear()), Tail(linear())], [torch.randn(2, 3, 4)] * 2, buckets=4)


@pytest.mark.parametrize("rows, expected", [(0, 0), (1, 1), (2, 2), (3, 4), (4, 4), (5, 5), (100, 100)])
def test_bucketed_is_the_smallest_bucket_that_holds_the_rows(rows, expected):
    assert bucketed(rows, BUCKETS) == expected


def test_pad_rows_repeats_row_zero_and_leaves_a_full_batch_alone():
    t = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    padded = pad_rows(t, 5)
    assert padded.shape == (5, 2)
    assert torch.equal(padded[:2], t) and torch.equal(padded[2:], t[:1].expand(3, 2))
    assert pad_rows(t, 2) is t


# --- exactness --------------------------------------------------------------------------------


SIZES = [(0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3), (4, 4, 4, 4), (5, 7, 6, 9),
         (3, None, 0, 1), (None, 3, None, 2), (None, None, None, 3)]


@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_padded_module_equals_separate_execution(padded, sizes):
    assert_equivalent(padded, random_inputs(padded, sizes, seed=sum(s or 0 for s in sizes)))


def test_the_graph_runs_on_bucketed_rows(padded, monkeypatch):
    seen = []
    run = padded._run
    monkeypatch.setattr(padded, "_run", lambda *xs: seen.append([None if x is None else len(x) for x in xs]) or run(*xs))
    outputs = padded(*random_inputs(padded, (3, 1, 0, 5)))
    assert seen == [[4, 1, 0, 5]]
    assert [outputs[0].shape[0], outputs[1].shape[1], outputs[2]["rows"].shape[0]] == [3, 1, 0]


def test_a_fragment_writing_into_its_input_gets_its_real_rows_written_back(padded):
    x = torch.randn(3, 3, 4)
    expected = x.clone()
    Tail(linear(), "in_place")(expected)
    padded(None, None, None, x)
    torch.testing.assert_close(x, expected)


def test_a_fragment_with_two_inputs_pads_both():
    layer = linear()
    rm = realign_all([TwoInputs(layer), Tail(layer)], [(example(), example()), example()], buckets=BUCKETS)
    for sizes in [(3, 1), (1, 3), (6, 0)]:
        assert_equivalent(rm, random_inputs(rm, sizes))


def test_buckets_is_none_without_padding_and_the_checked_tuple_with_it(padded):
    plain = realign_all([Tail(linear())], [example()])
    assert plain.buckets is None and not isinstance(plain, PaddedRealignedModule)
    assert padded.buckets == BUCKETS and isinstance(padded, graft_fx.RealignedModule)
    with pytest.raises(GraftError, match="increasing order"):
        realign_all([Tail(linear())], [example()], buckets=[4, 2])


# --- refusals ---------------------------------------------------------------------------------


class Centered(nn.Module):
    def forward(self, x):
        return x - x.mean(0)


class PerBatch(nn.Module):
    def forward(self, x):
        return x / x.shape[0]


class ReportsBatch(nn.Module):
    def forward(self, x):
        return x + 1, x.shape[0]


def training(module: nn.Module) -> nn.Module:
    return module.train()


@pytest.mark.parametrize("make, node, why", [
    (Centered, "mean", "not batch-separable"),
    (PerBatch, "div", "batch size as a value"),
    (ReportsBatch, "output 1", "computed from the batch size"),
    (lambda: training(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))), "dropout", "draws random numbers"),
    (lambda: training(nn.BatchNorm1d(3)), "batch_norm", "statistics of the batch"),
], ids=["mean_over_batch", "batch_size_value", "batch_size_output", "dropout_train", "batchnorm_train"])
def test_a_fragment_that_padding_would_change_is_refused_by_name(make, node, why):
    with pytest.raises(GraftError, match=r"fragment 1 \(\w+\) cannot be padded") as e:
        realign_all([Tail(linear()), make()], [example(), example()], buckets=BUCKETS)
    assert node in str(e.value) and why in str(e.value)


def test_the_same_row_mixing_fragment_realigns_without_buckets():
    rm = realign_all([Tail(linear()), Centered()], [example(), example()])
    assert_equivalent(rm, random_inputs(rm, (3, 5)))


def test_export_of_a_padded_module_is_refused_with_what_to_export(padded):
    with pytest.raises(GraftError, match="export the module realigned without buckets"):
        torch.export.export(padded, random_inputs(padded, (2, 2, 2, 2)),
                            dynamic_shapes={"inputs": tuple({0: Dim(f"b{f}")} for f in range(4))})


# --- compiled static shapes -------------------------------------------------------------------


def test_static_compilation_compiles_once_per_mix_of_buckets(padded):
    fast = torch.compile(padded, backend="aot_eager", fullgraph=True, dynamic=False)
    mixes = set()
    for seed, (a, d) in enumerate(itertools.product([2, 3, 4], [1, 3, 4])):
        args = random_inputs(padded, (a, None, None, d), seed=seed)
        outputs = fast(*args)
        torch.testing.assert_close(outputs[0], padded.reference(0)(args[0]))
        mixes.add((bucketed(a, BUCKETS), bucketed(d, BUCKETS)))
    assert counters["stats"]["unique_graphs"] == len(mixes) == 4


def test_a_call_without_rows_does_not_knock_the_compiled_module_off_its_graphs(padded):
    """Found by review: compiled without fullgraph, a call with every fragment absent made
    Dynamo skip ``_run`` for good, so every later call recompiled pieces or ran eagerly."""
    fast = torch.compile(padded, backend="aot_eager", dynamic=False)
    args = random_inputs(padded, (3, None, None, 3), seed=0)
    fast(*args)
    graphs = counters["stats"]["unique_graphs"]
    assert fast(None, None, None, None) == (None, None, None, None)
    fast(*random_inputs(padded, (0, None, None, 0), seed=1))
    outputs = fast(*args)
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(outputs[3], padded.reference(3)(args[3]))


def test_static_compilation_with_inductor_is_exact():
    layer = linear()
    rm = realign_all([Tail(layer), Tail(layer, "transposed")], [example(), example()], buckets=BUCKETS)
    fast = torch.compile(rm, fullgraph=True, dynamic=False)
    for sizes in [(3, 1), (4, 1)]:
        args = random_inputs(rm, sizes)
        outputs = fast(*args)
        for f, (out, x) in enumerate(zip(outputs, args)):
            torch.testing.assert_close(out, rm.reference(f)(x))
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_padded_module_re_aligns_after_weights_updated_in_place():
    same, copy = linear(), linear()  # equal weights, so shared by value until one changes
    rm = realign_all([Tail(same), Tail(copy)], [example(), example()], buckets=BUCKETS)
    fast = torch.compile(rm, backend="aot_eager", fullgraph=True, dynamic=False)
    args = random_inputs(rm, (3, 3))
    fast(*args)
    with torch.no_grad():
        copy.weight.mul_(2)
    outputs = fast(*args)
    for f, (out, x) in enumerate(zip(outputs, args)):
        torch.testing.assert_close(out, rm.reference(f)(x))


@pytest.mark.parametrize("requests, buckets, members, most", [
    (64, POWERS_OF_TWO, 1, 64), (64, POWERS_OF_TWO, 2, 96), (5, (1, 2, 4, 8), 2, 8), (5, (4,), 3, 12), (0, (1, 2), 3, 0)])
def test_most_rows_is_the_largest_padded_split_of_the_requests(requests, buckets, members, most):
    """Brute force agrees: every split of the requests among the members, padded."""
    splits = [s for s in itertools.product(range(requests + 1), repeat=members) if sum(s) <= requests]
    assert max(sum(bucketed(n, buckets) for n in s) for s in splits) == most
    assert most_rows(requests, tuple(buckets), members) == most
