"""Layouts: taking and concatenating rows wherever the batch lives, folded or not."""

import pytest
import torch

from graft_fx.rows import ROWS, Layout, cat_rows, take_rows


def folded(batch: int, outer: int, inner: int) -> torch.Tensor:
    """A (2, outer * batch * inner, 3) tensor whose element values name their sample."""
    sample = torch.arange(batch).repeat_interleave(inner).repeat(outer)
    return sample.view(1, -1, 1).expand(2, -1, 3).clone()


@pytest.mark.parametrize("outer,inner", [(1, 1), (1, 3), (4, 1), (2, 3)])
def test_take_rows_picks_exactly_the_samples(outer, inner):
    t = folded(5, outer, inner)
    layout = Layout(1, outer, inner)
    part = take_rows(t, layout, 1, 3)
    assert part.shape == (2, outer * 3 * inner, 3)
    assert set(part.unique().tolist()) == {1, 2, 3}


@pytest.mark.parametrize("outer,inner", [(1, 1), (1, 3), (4, 1), (2, 3)])
def test_cat_rows_inverts_take_rows(outer, inner):
    t = folded(5, outer, inner) * 10 + torch.arange(3)
    layout = Layout(1, outer, inner)
    parts = [take_rows(t, layout, 0, 2), take_rows(t, layout, 2, 0), take_rows(t, layout, 2, 3)]
    assert torch.equal(cat_rows(layout, *parts), t)


def test_pytrees_of_rows_and_non_rows():
    a = (torch.arange(6).reshape(3, 2), torch.zeros(0))
    b = (torch.arange(4).reshape(2, 2) + 10, torch.zeros(0))
    joined = cat_rows((ROWS, None), a, b)
    assert joined[0].shape == (5, 2) and joined[1] is a[1]
    assert torch.equal(take_rows(joined, (ROWS, None), 3, 2)[0], b[0])
