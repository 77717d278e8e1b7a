"""The median over seeds and its order-statistic interval: known coverages, and coverage that
holds when checked by simulation."""

import numpy as np
import pytest

from graft_fx import GraftError
from graft_fx.serving.stats import median_ci


def test_five_values_give_their_range_at_94_percent():
    m = median_ci([5, 1, 3, 2, 4])
    assert (m.value, m.low, m.high, m.n) == (3, 1, 5, 5)
    assert m.coverage == pytest.approx(1 - 2 / 32)


def test_ten_values_drop_one_at_each_end():
    m = median_ci(list(range(10)))
    assert (m.value, m.low, m.high) == (4.5, 1, 8) and m.coverage == pytest.approx(1 - 2 * 11 / 1024)


def test_the_interval_covers_the_true_median_as_often_as_it_says():
    rng = np.random.default_rng(0)
    samples = [rng.lognormal(0, 1, 9) for _ in range(4000)]
    hits = [(m := median_ci(s)).low <= 1.0 <= m.high for s in samples]  # the lognormal's median is 1
    assert abs(np.mean(hits) - median_ci(samples[0]).coverage) < 0.02


def test_bad_input_is_refused():
    with pytest.raises(GraftError, match="no values"):
        median_ci([])
    with pytest.raises(GraftError, match="confidence"):
        median_ci([1.0], confidence=1.5)
