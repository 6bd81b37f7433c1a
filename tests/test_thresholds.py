"""Threshold calibration: a stated level holds on new inputs like the calibration set."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from edgeinfer.export.thresholds import (AGREEMENT_LEVELS, allowed_disagreements, calibrate_level,
                                         clopper_pearson_upper, disagreement_onsets, shortfall_risk, simulate)


def test_clopper_pearson_known_values():
    # zero failures in n trials: the one-sided 95% bound is 1 - 0.05 ** (1 / n) ("rule of three": ~3/n)
    for n in (10, 299, 1000):
        assert clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert clopper_pearson_upper(5, 5) == 1.0
    assert clopper_pearson_upper(10, 1000) > 0.01  # the bound sits above the observed rate


def test_shortfall_risk_of_zero_disagreements_is_the_chance_new_failures_come_first():
    # allowed 0 among n, a new run of n failing at t disagreements: the first t of the 2n merged
    # inputs (ordered by onset) are all new ones
    n, level = 436, 0.99
    t = int(np.floor((1 - level) * n)) + 1
    first_t_all_new = np.prod([(n - i) / (2 * n - i) for i in range(t)])
    assert shortfall_risk(0, n, level) >= first_t_all_new - 1e-12
    assert shortfall_risk(0, n, level) >= binom.cdf(0, n, 1 - level)  # and the long run's test


def test_allowed_disagreements_is_the_largest_count_within_the_risk():
    for n, level in ((2000, 0.99), (436, 0.95), (3000, 0.995)):
        k = allowed_disagreements(n, level)
        assert shortfall_risk(k, n, level) <= 0.035 < shortfall_risk(k + 1, n, level)
    assert allowed_disagreements(100, 0.99) == -1  # 100 inputs cannot certify 1%: no exit may answer


def _synthetic(n: int = 3000, exits: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, size=(n, exits))
    # deeper and more confident exits agree more often
    p_agree = np.clip(confidence + 0.05 * np.arange(exits), 0, 1) ** 3
    agrees = rng.uniform(size=(n, exits)) < p_agree
    return confidence, agrees


@pytest.mark.parametrize("level", AGREEMENT_LEVELS)
def test_calibration_count_stays_within_the_allowed_disagreements(level):
    confidence, agrees = _synthetic()
    result = calibrate_level(confidence, agrees, [1, 2, 3, 4], 5, level)
    outcome = simulate(confidence, agrees, list(result.thresholds))
    assert outcome.disagreements <= allowed_disagreements(len(confidence), level)
    assert result.calibration_agreement == pytest.approx(1 - outcome.disagreements / len(confidence), abs=1e-6)
    assert sum(result.exit_shares) == pytest.approx(1.0, abs=1e-5)
    assert 1.0 <= result.expected_mean_depth <= 5.0


@pytest.mark.parametrize("level", [0.95, 0.99])
def test_the_level_holds_on_new_halves_in_95_percent_of_splits(level):
    """The promise itself: calibrated on one half, the realised agreement on the other half reaches
    the level in at least 95% of random splits (the procedure aims at 96.5%; 400 splits leave ~1 pt
    of noise)."""
    confidence, agrees = _synthetic(n=4000, seed=3)
    rng = np.random.default_rng(0)
    held = []
    for _ in range(400):
        order = rng.permutation(len(confidence))
        calib, test = order[:2000], order[2000:]
        result = calibrate_level(confidence[calib], agrees[calib], [1, 2, 3, 4], 5, level)
        outcome = simulate(confidence[test], agrees[test], list(result.thresholds))
        held.append(1 - outcome.disagreements / len(test) >= level)
    assert result.expected_mean_depth < 5.0  # the test is not passed by never exiting
    assert np.mean(held) >= 0.945


def test_onsets_count_each_wrong_answer_from_the_threshold_that_first_gives_it():
    confidence = np.array([[0.9, 0.95], [0.8, 0.7], [0.6, 0.99]])
    agrees = np.array([[False, True], [True, False], [True, True]])
    onsets = disagreement_onsets(confidence, agrees)
    # input 0 leaves wrongly at exit 0 from 0.9 down; input 1 never reaches exit 1 (0.7 < 0.8);
    # input 2 agrees everywhere
    assert onsets.tolist() == [0.9, -np.inf, -np.inf]


def test_stricter_levels_go_deeper():
    confidence, agrees = _synthetic()
    depths = [calibrate_level(confidence, agrees, [1, 2, 3, 4], 5, lv).expected_mean_depth
              for lv in AGREEMENT_LEVELS]
    assert depths == sorted(depths)
    assert depths[0] < 5.0


def test_nan_confidence_never_exits():
    confidence, agrees = _synthetic()
    confidence[:, 0] = np.nan
    result = calibrate_level(confidence, agrees, [1, 2, 3, 4], 5, 0.95)
    assert result.thresholds[0] is None and result.exit_shares[0] == 0.0
