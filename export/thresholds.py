"""Exit thresholds with a stated agreement level, Learn-then-Test style.

For a level a (e.g. 0.99) we want P(answer differs from the full model) <= 1 - a. On the
calibration part, the cascade's disagreements are counted over *all* inputs (CALM's consistency
risk), and a threshold set is accepted only while the one-sided 95% Clopper-Pearson upper bound
of that rate stays within 1 - a. Scanning each exit's candidates from the most confident down and
stopping at the first failure is fixed-sequence testing, as in CALM (arXiv 2207.07061, §3.1 of
shared/reference/algorithms.md). How the error budget is shared between exits is chosen among a
few fixed schedules by the expected depth it buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from ..manifest import ExitThresholds

AGREEMENT_LEVELS = (0.95, 0.98, 0.99, 0.995)
BOUND_CONFIDENCE = 0.95
# cumulative share of the error budget that exits 1..E may spend: budget * (e / E) ** p
BUDGET_SCHEDULES = (0.0, 0.5, 1.0, 2.0)


def clopper_pearson_upper(errors: int, n: int, confidence: float = BOUND_CONFIDENCE) -> float:
    if errors >= n:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, n - errors))


def error_budget(n: int, level: float) -> int:
    """The most disagreements among n inputs whose upper bound stays within 1 - level (-1: none)."""
    allowed = -1
    while allowed + 1 <= n and clopper_pearson_upper(allowed + 1, n) <= 1.0 - level:
        allowed += 1
    return allowed


@dataclass(frozen=True)
class CascadeOutcome:
    exit_index: np.ndarray  # per input: index of the exit taken, len(exits) for full depth
    disagreements: int


def simulate(confidence: np.ndarray, agrees: np.ndarray, thresholds: list[float | None]) -> CascadeOutcome:
    """Where each input leaves the cascade, and how many of those answers differ from the full model."""
    n, exits = confidence.shape
    taken = np.full(n, exits, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    wrong = 0
    for e, threshold in enumerate(thresholds):
        if threshold is None:
            continue
        leaving = open_ & (confidence[:, e] >= threshold)
        taken[leaving] = e
        wrong += int((leaving & ~agrees[:, e]).sum())
        open_ &= ~leaving
    return CascadeOutcome(taken, wrong)


def _greedy_thresholds(confidence: np.ndarray, agrees: np.ndarray, caps: list[int]) -> list[float | None]:
    n, exits = confidence.shape
    open_ = np.ones(n, dtype=bool)
    spent = 0
    thresholds: list[float | None] = []
    for e in range(exits):
        candidates = np.flatnonzero(open_ & np.isfinite(confidence[:, e]))
        order = candidates[np.argsort(-confidence[candidates, e], kind="stable")]
        values = confidence[order, e]
        cumulative_wrong = spent + np.cumsum(~agrees[order, e])
        # a threshold admits every input with confidence >= it, so only cut between distinct values
        last_of_value = np.r_[values[1:] != values[:-1], True] if len(values) else np.array([], bool)
        ok = (cumulative_wrong <= caps[e]) & last_of_value
        failing = np.flatnonzero(last_of_value & (cumulative_wrong > caps[e]))
        stop = failing[0] if len(failing) else len(values)
        admitted = np.flatnonzero(ok[:stop])
        if len(admitted) == 0:
            thresholds.append(None)
            continue
        cut = admitted[-1]
        thresholds.append(float(values[cut]))
        leaving = order[: cut + 1]
        spent = int(cumulative_wrong[cut])
        open_[leaving] = False
    return thresholds


def calibrate_level(confidence: np.ndarray, agrees: np.ndarray, exit_depths: list[int], num_blocks: int,
                    level: float) -> ExitThresholds:
    """confidence, agrees: [n_inputs, n_exits]; NaN confidence means the exit cannot judge that input."""
    n, exits = confidence.shape
    budget = error_budget(n, level)
    depth_of = np.array(list(exit_depths) + [num_blocks], dtype=np.float64)
    best: tuple[float, list[float | None], CascadeOutcome] | None = None
    for power in BUDGET_SCHEDULES:
        if budget < 0:
            break
        caps = [int(budget * ((e + 1) / exits) ** power) for e in range(exits)]
        thresholds = _greedy_thresholds(confidence, agrees, caps)
        outcome = simulate(confidence, agrees, thresholds)
        mean_depth = float(depth_of[outcome.exit_index].mean())
        if best is None or mean_depth < best[0]:
            best = (mean_depth, thresholds, outcome)
    if best is None:
        thresholds, outcome = [None] * exits, simulate(confidence, agrees, [None] * exits)
        mean_depth = float(num_blocks)
    else:
        mean_depth, thresholds, outcome = best
    shares = np.bincount(outcome.exit_index, minlength=exits + 1) / max(n, 1)
    return ExitThresholds(
        agreement=level,
        thresholds=tuple(thresholds),
        exit_shares=tuple(round(float(s), 6) for s in shares),
        expected_mean_depth=round(mean_depth, 4),
        calibration_agreement=round(1.0 - outcome.disagreements / max(n, 1), 6),
    )
