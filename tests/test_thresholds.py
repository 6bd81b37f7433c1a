"""Threshold calibration keeps the stated agreement on the data it was calibrated on."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.export.thresholds import calibrate_level, clopper_pearson_upper, error_budget, simulate


def test_clopper_pearson_known_values():
    # zero failures in n trials: the one-sided 95% bound is 1 - 0.05 ** (1 / n) ("rule of three": ~3/n)
    for n in (10, 299, 1000):
        assert clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert clopper_pearson_upper(5, 5) == 1.0
    assert clopper_pearson_upper(10, 1000) > 0.01  # the bound sits above the observed rate


def test_error_budget_is_the_largest_count_within_the_level():
    budget = error_budget(2000, 0.99)
    assert clopper_pearson_upper(budget, 2000) <= 0.01 < clopper_pearson_upper(budget + 1, 2000)
    assert error_budget(100, 0.99) == -1  # 100 inputs cannot certify 1%: no exit may answer


def _synthetic(n: int = 3000, exits: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, size=(n, exits))
    # deeper and more confident exits agree more often
    p_agree = np.clip(confidence + 0.05 * np.arange(exits), 0, 1) ** 3
    agrees = rng.uniform(size=(n, exits)) < p_agree
    return confidence, agrees


@pytest.mark.parametrize("level", [0.95, 0.98, 0.99, 0.995])
def test_calibrated_cascade_holds_the_level_with_its_bound(level):
    confidence, agrees = _synthetic()
    result = calibrate_level(confidence, agrees, [1, 2, 3, 4], 5, level)
    outcome = simulate(confidence, agrees, list(result.thresholds))
    assert clopper_pearson_upper(outcome.disagreements, len(confidence)) <= 1 - level
    assert result.calibration_agreement == pytest.approx(1 - outcome.disagreements / len(confidence), abs=1e-6)
    assert sum(result.exit_shares) == pytest.approx(1.0, abs=1e-5)
    assert 1.0 <= result.expected_mean_depth <= 5.0


def test_stricter_levels_go_deeper():
    confidence, agrees = _synthetic()
    depths = [calibrate_level(confidence, agrees, [1, 2, 3, 4], 5, lv).expected_mean_depth
              for lv in (0.95, 0.98, 0.99, 0.995)]
    assert depths == sorted(depths)
    assert depths[0] < 5.0


def test_nan_confidence_never_exits():
    confidence, agrees = _synthetic()
    confidence[:, 0] = np.nan
    result = calibrate_level(confidence, agrees, [1, 2, 3, 4], 5, 0.95)
    assert result.thresholds[0] is None and result.exit_shares[0] == 0.0
