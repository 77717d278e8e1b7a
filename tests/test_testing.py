"""Tests of graft_fx.testing, the strategies users property-test their own fragments with.

The strategies read only ``rm.input_specs``, so these tests use a fake RealignedModule (a small
class with ``input_specs`` and ``num_fragments``) and need none of the realignment core. Checked:
drawn inputs match the specs (shapes, dtypes, one tensor or a tuple), batch size 0 and absent
fragments do appear, at least one fragment is always present, seeds reproduce inputs, and bad
arguments raise clear errors.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

import pytest
import torch
from hypothesis import find, given, settings

import graft_fx.testing as gt


class Spec(NamedTuple):
    """Stands in for graft_fx.InputSpec: the shape of one row, dtype, device."""

    row_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device | None = None


class FakeRealigned:
    """What the strategies need of a RealignedModule."""

    def __init__(self, *input_specs: tuple[Spec, ...]):
        self.input_specs = list(input_specs)

    @property
    def num_fragments(self) -> int:
        return len(self.input_specs)


RM = FakeRealigned(
    (Spec((3, 4, 4), torch.float32),),
    (Spec((5,), torch.int64), Spec((2, 2), torch.bool)),
    (Spec((), torch.float16, torch.device("cpu")),),
)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def assert_matches_specs(rm: FakeRealigned, args: tuple) -> None:
    """Each present fragment's inputs have the specs' row shapes and dtypes and one batch size."""
    assert len(args) == rm.num_fragments
    for x, specs in zip(args, rm.input_specs):
        if x is None:
            continue
        assert isinstance(x, tuple) == (len(specs) > 1)
        tensors = as_tuple(x)
        assert len(tensors) == len(specs)
        for t, s in zip(tensors, specs):
            assert tuple(t.shape[1:]) == s.row_shape and t.dtype == s.dtype
            assert t.shape[0] == tensors[0].shape[0]


def rows(x) -> int | None:
    return None if x is None else as_tuple(x)[0].shape[0]


# batch_sizes and presence


@given(gt.batch_sizes(3, max_rows=4))
def test_batch_sizes_are_in_range(sizes):
    assert len(sizes) == 3 and all(0 <= b <= 4 for b in sizes)


def test_batch_sizes_include_zero_and_max():
    assert find(gt.batch_sizes(2), lambda s: s[1] == 0) == (0, 0)
    find(gt.batch_sizes(2, max_rows=3), lambda s: 3 in s)


@given(gt.presence(3))
def test_presence_has_one_present_at_least(present):
    assert len(present) == 3 and any(present) and all(isinstance(p, bool) for p in present)


def test_presence_leaves_fragments_out():
    assert find(gt.presence(3), lambda p: not all(p)) == [True, False, False]
    find(gt.presence(3), lambda p: p == [False, False, True])
    assert find(gt.presence(1), lambda p: True) == [True]


@pytest.mark.parametrize("make", [lambda: gt.batch_sizes(0), lambda: gt.batch_sizes(2, -1), lambda: gt.presence(0)])
def test_bad_counts_raise(make):
    with pytest.raises(ValueError):
        make()


# random_inputs


def test_random_inputs_match_specs():
    args = gt.random_inputs(RM, (2, 3, 1))
    assert_matches_specs(RM, args)
    assert [rows(x) for x in args] == [2, 3, 1]


def test_random_inputs_values_follow_dtype():
    ints, bools = gt.random_inputs(RM, (None, 50, None))[1]
    assert set(ints.unique().tolist()) <= {0, 1}
    assert bools.any() and not bools.all()
    floats = gt.random_inputs(RM, (50, None, None))[0]
    assert floats.std() > 0.5


def test_random_inputs_zero_rows_and_absent():
    args = gt.random_inputs(RM, (0, None, 0))
    assert args[1] is None
    assert_matches_specs(RM, args)
    assert [rows(x) for x in args] == [0, None, 0]


def test_random_inputs_seeds_reproduce():
    a, b = gt.random_inputs(RM, (2, 2, 2), seed=7), gt.random_inputs(RM, (2, 2, 2), seed=7)
    torch.testing.assert_close(a, b)
    c = gt.random_inputs(RM, (2, 2, 2), seed=8)
    assert not torch.equal(a[0], c[0])


def test_random_inputs_of_one_fragment_ignore_the_others():
    a = gt.random_inputs(RM, (2, None, 1), seed=3)
    b = gt.random_inputs(RM, (2, 3, 0), seed=3)
    torch.testing.assert_close(a[0], b[0])


def test_random_inputs_bad_sizes_raise():
    with pytest.raises(ValueError, match="one entry per fragment"):
        gt.random_inputs(RM, (1, 1))
    with pytest.raises(ValueError, match=">= 0"):
        gt.random_inputs(RM, (1, -1, 1))
    with pytest.raises(TypeError, match="input_specs"):
        gt.random_inputs(object(), (1,))


# calls


@given(gt.calls(RM))
def test_calls_match_specs(args):
    assert_matches_specs(RM, args)
    assert any(x is not None for x in args)
    assert all(r is None or 0 <= r <= 3 for r in map(rows, args))


def test_calls_reach_zero_rows_and_absent_fragments():
    find(gt.calls(RM), lambda args: rows(args[0]) == 0 and args[1] is not None)
    find(gt.calls(RM), lambda args: args[0] is None and args[2] is not None)
    find(gt.calls(RM, max_rows=5), lambda args: rows(args[2]) == 5)


def _draw_calls(torch_seed: int) -> list[tuple]:
    """The arguments one deterministic hypothesis run draws, with the global torch RNG at
    ``torch_seed`` (which the inputs must not depend on)."""
    torch.manual_seed(torch_seed)
    drawn = []

    @settings(max_examples=10, derandomize=True, database=None)
    @given(gt.calls(RM))
    def collect(args):
        drawn.append(args)

    collect()
    return drawn


def test_calls_are_reproducible():
    first, second = _draw_calls(1), _draw_calls(2)
    assert len(first) == len(second) > 1
    torch.testing.assert_close(first, second)


# the module itself


def test_assert_equivalent_is_reexported():
    verify = pytest.importorskip("graft_fx.verify")
    assert gt.assert_equivalent is verify.assert_equivalent


def test_missing_hypothesis_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.delitem(sys.modules, "graft_fx.testing")
    with pytest.raises(ImportError, match="pip install hypothesis"):
        importlib.import_module("graft_fx.testing")


def test_fine_tuned_copies_differ_in_every_weight_and_keep_their_structure():
    import torch.nn as nn

    from graft_fx.testing import fine_tuned

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    a, b, c = fine_tuned(model, 3)
    assert a is model and not b.training and not c.training
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert p.shape == q.shape and p.dtype == q.dtype
        if p.is_floating_point():
            assert not torch.equal(p, q) and not torch.equal(q, r), name
    assert (b[1].running_var > 0).all()
