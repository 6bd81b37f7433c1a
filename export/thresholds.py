"""Exit thresholds whose stated agreement holds on new data like the calibration set.

The claim a level makes: with 95% confidence, over the next n inputs drawn like the n calibration
inputs (and over any longer run), the cascade gives the full model's answer on at least a share
`level` of them.

Why not a Clopper-Pearson bound on the calibration count: it holds for thresholds fixed in advance,
and a search that tunes each exit's threshold until the count reaches its budget picks thresholds
that got lucky on those very inputs (SST-2 halves calibrated at 0.99 realised 0.973-0.984). And
the bound speaks of the long-run rate, while a user sees the share in a finite run.

So the procedure is Learn then Test (Angelopoulos et al., arXiv 2110.01052) over a family fixed
before any answer is seen: one threshold for every exit (CALM, arXiv 2207.07061). Each input's
loss along the family is made monotone: it counts as a disagreement from the loosest threshold
where it first disagrees onward, which only ever over-counts. The loosest threshold whose count
stays within k is chosen. With monotone losses, calibration and new inputs are exchangeable, so
the chance that a new run of m inputs falls below the level is the chance that its t-th
disagreement comes before the calibration set's (k+1)-th: a hypergeometric tail that needs no
model of the confidences. k is the largest count keeping that tail within 3.5% (SHORTFALL_RISK),
for m = n, 2n, 4n and the long run (where it becomes the binomial test of the rate itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import beta, binom, hypergeom

from ..manifest import ExitThresholds, LengthThresholds

AGREEMENT_LEVELS = (0.95, 0.98, 0.99, 0.995)
BOUND_CONFIDENCE = 0.95  # what a level states
# What the procedure allows: the chance of a shortfall is kept within 3.5%, not the 5% stated. The
# rank argument assumes exchangeable inputs, and real calibration sets hold near-duplicates (SST-2's
# training file repeats 366 rows) that split unevenly; the margin keeps the statement true there.
SHORTFALL_RISK = 0.035
HORIZON_MULTIPLES = (1, 2, 4)  # new runs of m = n, 2n, 4n inputs, besides the long run
GUARANTEE = ("agreement >= {level} with 95% confidence over any run of {n} or more inputs like the "
             "calibration set (within each input-length range when the level has ranges)")


def clopper_pearson_upper(errors: int, n: int, confidence: float = BOUND_CONFIDENCE) -> float:
    if errors >= n:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, n - errors))


def shortfall_risk(allowed: int, n: int, level: float) -> float:
    """The chance that thresholds admitting `allowed` disagreements among n calibration inputs
    leave a new run below `level`, the worst over the horizons checked."""
    rate = 1.0 - level
    risks = [float(binom.cdf(allowed, n, rate))]  # the long run: the true rate above 1 - level
    for multiple in HORIZON_MULTIPLES:
        m = multiple * n
        failing = math.floor(rate * m + 1e-9) + 1  # disagreements that put a run of m below level
        if failing + allowed > n + m:
            continue
        risks.append(float(hypergeom(n + m, m, failing + allowed).sf(failing - 1)))
    return max(risks)


@lru_cache(maxsize=64)  # a pure function of three numbers, asked again for every split of a study
def allowed_disagreements(n: int, level: float, risk: float = SHORTFALL_RISK) -> int:
    """The most calibration disagreements the chosen thresholds may show (-1: no exit may answer)."""
    low, high = -1, n - 1  # the risk grows with the count allowed: bisect for the last one within
    while low < high:
        middle = (low + high + 1) // 2
        if shortfall_risk(middle, n, level) <= risk:
            low = middle
        else:
            high = middle - 1
    return low


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


def simulate_level(confidence: np.ndarray, agrees: np.ndarray, level: ExitThresholds,
                   lengths: np.ndarray | None = None) -> CascadeOutcome:
    """simulate() with each input held to its length range's thresholds, when the level has ranges."""
    if not level.by_length or lengths is None:
        return simulate(confidence, agrees, list(level.thresholds))
    taken, wrong = np.full(len(confidence), confidence.shape[1], dtype=np.int64), 0
    which = range_index(lengths, [r.max_tokens for r in level.by_length])
    for r, bucket in enumerate(level.by_length):
        rows = np.flatnonzero(which == r)
        outcome = simulate(confidence[rows], agrees[rows], list(bucket.thresholds))
        taken[rows], wrong = outcome.exit_index, wrong + outcome.disagreements
    return CascadeOutcome(taken, wrong)


def disagreement_onsets(confidence: np.ndarray, agrees: np.ndarray) -> np.ndarray:
    """Per input, the highest common threshold at which the cascade answers it wrongly (-inf: none).

    With one threshold for every exit an input leaves at the first exit whose confidence reaches it,
    so exit e answers it for thresholds in (max confidence of the exits before e, confidence at e].
    Every threshold at or below the onset counts the input as a disagreement (the monotone loss)."""
    filled = np.where(np.isfinite(confidence), confidence, -np.inf)
    before = np.maximum.accumulate(np.c_[np.full(len(filled), -np.inf), filled[:, :-1]], axis=1)
    reachable = filled > before
    wrong_there = np.where(reachable & ~agrees, filled, -np.inf)
    return wrong_there.max(axis=1) if wrong_there.shape[1] else np.full(len(filled), -np.inf)


def common_threshold(confidence: np.ndarray, agrees: np.ndarray, allowed: int) -> float | None:
    """The loosest threshold shared by all exits whose monotone disagreement count is <= allowed."""
    if allowed < 0:
        return None
    onsets = np.sort(disagreement_onsets(confidence, agrees))[::-1]
    finite = confidence[np.isfinite(confidence)]
    if len(finite) == 0:
        return None
    if allowed >= len(onsets) or not np.isfinite(onsets[allowed]):
        return float(finite.min())  # every input may leave at its first exit
    cut = float(onsets[allowed])  # the (allowed + 1)-th onset must stay out
    above = finite[finite > cut]
    if len(above) == 0:
        return None
    # halfway to the next confidence seen: the same calibration answers, and room for the last
    # digits in which onnxruntime and PyTorch differ
    return cut + (float(above.min()) - cut) / 2


LENGTH_EDGES = (16, 32, 64, 128)  # token counts bounding the length ranges, before sparse ones merge
MIN_RANGE_EXAMPLES = 300  # fewer calibration inputs than this, and a range joins its neighbour


def length_ranges(lengths: np.ndarray) -> list[int | None]:
    """Upper token counts of the ranges thresholds are calibrated in (the last: None, unbounded).

    Fixed edges, so the ranges depend on no answer; a range with too few calibration inputs to
    certify much joins its smaller neighbour."""
    limits: list[int | None] = [*LENGTH_EDGES, None]
    lower = [0, *LENGTH_EDGES]

    def count(i: int) -> int:
        high = limits[i]
        return int(((lengths > lower[i]) & ((lengths <= high) if high is not None else True)).sum())

    while len(limits) > 1:
        counts = [count(i) for i in range(len(limits))]
        i = int(np.argmin(counts))
        if counts[i] >= MIN_RANGE_EXAMPLES:
            break
        j = i - 1 if i > 0 else i + 1  # merge with the shorter neighbour (the first: the longer)
        keep, drop = (j, i) if j < i else (i, j)
        limits[keep] = limits[drop]  # the merged range ends where the later one did
        del limits[drop], lower[drop]
    return limits


def range_index(lengths: np.ndarray, limits: list[int | None]) -> np.ndarray:
    bounded = np.array([l for l in limits if l is not None], dtype=np.int64)
    return np.searchsorted(bounded, lengths, side="left")


def calibrate_level(confidence: np.ndarray, agrees: np.ndarray, exit_depths: list[int], num_blocks: float,
                    level: float, lengths: np.ndarray | None = None) -> ExitThresholds:
    """confidence, agrees: [n_inputs, n_exits]; NaN confidence means the exit cannot judge that input.

    num_blocks: the cost of an input that no exit answers, in blocks. lengths: each input's token
    count; given, thresholds are calibrated per length range (length_ranges)."""
    n, exits = confidence.shape
    judged = np.isfinite(confidence).any(axis=0)
    limits = length_ranges(lengths) if lengths is not None and n else [None]
    which = range_index(lengths, limits) if len(limits) > 1 else np.zeros(n, dtype=np.int64)
    per_range, taken, wrong = [], np.full(n, exits, dtype=np.int64), 0
    for r, limit in enumerate(limits):
        rows = np.flatnonzero(which == r)
        threshold = common_threshold(confidence[rows], agrees[rows], allowed_disagreements(len(rows), level)) \
            if len(rows) else None
        thresholds = tuple(threshold if threshold is not None and judged[e] else None for e in range(exits))
        outcome = simulate(confidence[rows], agrees[rows], list(thresholds))
        taken[rows], wrong = outcome.exit_index, wrong + outcome.disagreements
        per_range.append(LengthThresholds(limit, thresholds, int(len(rows))))
    strictest = tuple(None if any(p.thresholds[e] is None for p in per_range)
                      else max(p.thresholds[e] for p in per_range) for e in range(exits))
    depth_of = np.array(list(exit_depths) + [num_blocks], dtype=np.float64)
    shares = np.bincount(taken, minlength=exits + 1) / max(n, 1)
    return ExitThresholds(
        agreement=level,
        thresholds=strictest,
        exit_shares=tuple(round(float(s), 6) for s in shares),
        expected_mean_depth=round(float(depth_of[taken].mean()) if n else float(num_blocks), 4),
        calibration_agreement=round(1.0 - wrong / max(n, 1), 6),
        by_length=tuple(per_range) if len(per_range) > 1 else (),
    )


def guarantee(level: float, n: int) -> str:
    """The claim a calibrated level makes, in words for `inspect` and the bench."""
    return GUARANTEE.format(level=level, n=n)


def threshold_record(source: str, examples: int, confidence_kind: str, lengths: np.ndarray | None = None) -> dict:
    """What the manifest says about how its thresholds were calibrated, what they promise, and the
    lengths of the inputs they were calibrated on (the runtime flags inputs outside that span)."""
    record = {"data": source, "examples": examples, "confidence": confidence_kind,
              "procedure": "one threshold for every exit per input-length range, the loosest whose monotone "
                           f"disagreement count keeps the chance of a shortfall within {SHORTFALL_RISK:.1%} "
                           "(Learn then Test)",
              "guarantee": {str(level): guarantee(level, examples) for level in AGREEMENT_LEVELS}}
    if lengths is not None and len(lengths):
        record["lengths"] = {"min": int(lengths.min()), "p10": int(np.percentile(lengths, 10)),
                             "p50": int(np.percentile(lengths, 50)), "p90": int(np.percentile(lengths, 90)),
                             "max": int(lengths.max())}
    return record
