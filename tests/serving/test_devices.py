"""Phone speeds: a device class's head time by hand, the log-normal fit, the fitted population
against the presets it was fitted to, and deterministic draws."""

import math

import numpy as np
import pytest

from graft_fx import GraftError
from graft_fx.serving.devices import DEVICES, PHONE_SPEEDS, DeviceClass, LogNormalSpeeds


def test_head_time_is_overhead_plus_flops_at_the_rate_and_an_empty_head_is_free():
    phone = DeviceClass("d", gflops=20.0, overhead_ms=2.0)
    assert phone.head_s(1.2e9) == pytest.approx(0.002 + 1.2e9 / 20e9)
    assert phone.head_s(0.0) == 0.0


def test_the_fit_recovers_a_log_normal_from_its_own_quantiles():
    known = LogNormalSpeeds(30.0, 0.8, 1.0)
    fitted = LogNormalSpeeds.fit({p: known.gflops_at(p) for p in (0.05, 0.3, 0.9)}, overhead_ms=1.0)
    assert fitted.median_gflops == pytest.approx(30.0) and fitted.sigma == pytest.approx(0.8)


def test_the_fitted_population_matches_the_presets():
    """Entry-level, mid-range and high-end at the 10th, 50th and 90th percentiles, within 10%;
    the NPU preset in the top 2%."""
    for p, preset in [(0.1, "low-end"), (0.5, "mid-range"), (0.9, "high-end")]:
        assert PHONE_SPEEDS.gflops_at(p) == pytest.approx(DEVICES[preset].gflops, rel=0.1)
    assert PHONE_SPEEDS.gflops_at(0.98) < DEVICES["flagship-npu"].gflops < PHONE_SPEEDS.gflops_at(0.995)


def test_draws_follow_the_distribution_and_repeat_for_a_seed():
    phones = PHONE_SPEEDS.draw(np.random.default_rng(0), 20_000)
    logs = np.log([p.gflops for p in phones])
    assert math.exp(np.median(logs)) == pytest.approx(PHONE_SPEEDS.median_gflops, rel=0.05)
    assert logs.std() == pytest.approx(PHONE_SPEEDS.sigma, rel=0.03)
    assert {p.overhead_ms for p in phones} == {3.0}
    again = PHONE_SPEEDS.draw(np.random.default_rng(0), 5)
    assert again == phones[:5] and again != PHONE_SPEEDS.draw(np.random.default_rng(1), 5)


@pytest.mark.parametrize("quantiles", [{0.5: 20.0}, {0.5: 20.0, 1.0: 100.0}, {0.1: 5.0, 0.9: -1.0}])
def test_a_fit_needs_two_probabilities_and_positive_rates(quantiles):
    with pytest.raises(GraftError, match="expected two or more probabilities in"):
        LogNormalSpeeds.fit(quantiles, overhead_ms=3.0)


@pytest.mark.parametrize("bad", [lambda: DeviceClass("d", 0.0, 1.0), lambda: DeviceClass("d", 1.0, -1.0),
                                 lambda: LogNormalSpeeds(0.0, 1.0, 1.0), lambda: LogNormalSpeeds(1.0, -1.0, 1.0),
                                 lambda: LogNormalSpeeds(1.0, 1.0, -1.0)])
def test_bad_parameters_raise(bad):
    with pytest.raises(GraftError, match="expected"):
        bad()
