"""What the runtime may trade for speed: small frozen policies and the pure decisions they make."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..manifest import TOKEN_SCORES, ExitThresholds, Manifest, exact_level, strictest_level
from .arguments import real, whole

REDUCTIONS = ("prune", "merge")
FALLBACKS = ("refuse", "nearest")


AUTO_PRECISION = "auto"  # Policy.precision: the cheapest calibrated precision at the level


@dataclass(frozen=True)
class Policy:
    """How an input may be answered with less work than the full model.

    agreement: the calibrated agreement level with the full model that early exits must hold
        (the strictest stored level at or above it is used); None turns early exit off.
    keep_schedule: token pruning as (after_block, fraction of the original tokens kept), e.g.
        ((2, 0.7), (4, 0.5)); empty turns pruning off.
    importance: which block output ranks tokens for pruning: "token_importance" (attention received,
        averaged over heads and queries; LTP) or "cls_attention" (attention from the first token; EViT).
    restart_below: when the answer's confidence is below this, run again at the strongest point
        (full depth, every token), if the latency budget covers it; None turns restart off.
    reduction: how keep_schedule removes tokens: "prune" drops the least important, "merge"
        averages the most similar pairs (ToMe bipartite soft matching; runtime/encoder/merging.py).
    skip_blocks: blocks (1-based) not run at all; calibration (`edgeinfer calibrate`) keeps the skip
        sets whose answers hold the agreement level.
    audit: a share of requests (e.g. 0.05) also run at full depth on a background thread after their
        answer is returned; when an anytime-valid test shows the agreement level is not held on this
        traffic, the session moves to the next stricter stored level (runtime/audit.py). None: off.
    precision: the precision variant to run first ("fp32" or a variant the package lists, e.g.
        "int8"). A variant uses its own calibrated exit thresholds and restarts at fp32 when its
        final confidence is below its calibrated restart threshold: the cascade cheap point first,
        fp32 on restart. "auto" (the default) takes whichever of fp32 and the package's variants
        calibration expects to cost least at the agreement level (runtime/encoder/planner.py,
        choose_precision); with pruning, skipping or restart_below set, or exits off, it is fp32.
    fallback: what happens when the package cannot do exactly what the policy asks (a level it has
        not calibrated, a variant without thresholds for it). "refuse" (the default): one line
        saying what is missing. "nearest": run the nearest stricter thing instead, with a
        UserWarning, and record it in every trace (level_used, precision). docs/runtime.md lists
        the rules.
    """

    agreement: float | None = 0.99
    keep_schedule: tuple[tuple[int, float], ...] = ()
    restart_below: float | None = None
    importance: str = "token_importance"
    precision: str = AUTO_PRECISION
    reduction: str = "prune"
    skip_blocks: tuple[int, ...] = ()
    audit: float | None = None
    fallback: str = "refuse"

    def __post_init__(self) -> None:
        for name, allowed in (("fallback", FALLBACKS), ("reduction", REDUCTIONS), ("importance", TOKEN_SCORES)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} {getattr(self, name)!r} must be one of {', '.join(allowed)}")
        if self.audit is not None:
            real("audit (a share of requests)", self.audit, 0.0, 1.0, low_open=True)
            if self.agreement is None:
                raise InputError("audit checks an agreement level; set agreement (e.g. Policy(agreement=0.99, audit=0.05))")
        if not isinstance(self.precision, str) or not self.precision:
            raise InputError(f"precision {self.precision!r} must be a variant name such as 'fp32' or 'int8'")
        if self.restart_below is not None:
            real("restart_below (a confidence)", self.restart_below, 0.0, 1.0, low_open=True)
        if self.agreement is not None:
            real("policy agreement", self.agreement, 0.5, 1.0)
        if not isinstance(self.skip_blocks, (tuple, list)):
            raise InputError(f"skip_blocks takes a tuple of block numbers, e.g. (3,), not {self.skip_blocks!r}")
        for block in self.skip_blocks:
            whole("a skip_blocks entry", block, 1, 1 << 16)
        if list(self.skip_blocks) != sorted(set(self.skip_blocks)):
            raise InputError(f"skip_blocks {self.skip_blocks} must be distinct block numbers >= 1, in order")
        if not isinstance(self.keep_schedule, (tuple, list)) or not all(
                isinstance(entry, (tuple, list)) and len(entry) == 2 for entry in self.keep_schedule):
            raise InputError(f"keep_schedule takes (after_block, fraction) pairs, e.g. ((2, 0.7), (4, 0.5)), "
                             f"not {self.keep_schedule!r}")
        for block, fraction in self.keep_schedule:
            whole("a keep_schedule block", block, 1, 1 << 16)
            real(f"the keep_schedule fraction after block {block}", fraction, 0.0, 1.0, low_open=True)
        blocks = [b for b, _ in self.keep_schedule]
        if blocks != sorted(set(blocks)):
            raise InputError(f"keep_schedule {self.keep_schedule} must name each block once, in order")

    @staticmethod
    def off() -> "Policy":
        """Every adaptive feature off: the full model, every token."""
        return Policy(agreement=None)


EMBEDDING_AGREES_AT = 0.99  # cosine to the full model's embedding that counts as the same answer


def embedding_agreement_cosine(manifest: Manifest) -> float:
    """What "agrees with the full model" means for this package's embeddings: the cosine its
    thresholds were calibrated for (the package records it), so that calibration, the bench, the
    operating points and the audit all judge by one definition."""
    record = manifest.calibration.get("thresholds", {})
    value = record.get("embedding_agreement_cosine") if isinstance(record, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else EMBEDDING_AGREES_AT


def substitute(fallback: str, missing: str, instead: str) -> None:
    """A policy asks for something the package cannot do exactly: refuse in one line, or (fallback
    "nearest") say in a UserWarning what runs instead."""
    if fallback == "refuse":
        raise InputError(f"{missing}; ask for what the package has, or pass Policy(..., fallback='nearest') "
                         f"to run {instead} instead")
    warnings.warn(f"{missing}: running {instead} (fallback='nearest')", UserWarning, stacklevel=4)


def variant_level(manifest: Manifest, precision: str, agreement: float, fallback: str) -> ExitThresholds | None:
    """A precision variant's calibrated cascade at this level (its exits' and its restart thresholds;
    an embedding variant's level keeps every answer, quant/variant_thresholds.py); None, as far as the
    fallback allows, when calibration certified none of its answers there, so fp32 runs instead."""
    variant = manifest.precision_variant(precision)
    level = stored_level(variant.thresholds, agreement, fallback, f"precision {variant.name!r}")
    if level is None or not variant_answers(manifest, level):
        why = "calibration found no restart threshold that holds it" if manifest.model.task == "text-classification" \
            else "too few of its calibration embeddings were within the agreement cosine of fp32's outright"
        substitute(fallback, f"precision {variant.name!r} certifies no answer at agreement {agreement:g} ({why})", "fp32")
        return None
    return level


def variant_answers(manifest: Manifest, level: ExitThresholds) -> bool:
    """Whether a variant's level answers anything itself. A classifier's needs a restart threshold
    on its final confidence. An embedding's answer has no confidence, so its level must restart
    nothing at all (a level calibrated with restarts, as before embedding variants ran alone, would
    not hold without them)."""
    if not level.certifies_final_answer:
        return False
    return manifest.model.task == "text-classification" or not level.exit_shares or level.exit_shares[-1] == 0


def stored_level(levels: tuple[ExitThresholds, ...], agreement: float, fallback: str,
                 owner: str = "this package") -> ExitThresholds | None:
    """The calibrated set for exactly this agreement level, or the substitution the fallback allows:
    the strictest stored level above it, else none (exits off: the full model)."""
    level = exact_level(levels, agreement)
    if level is not None:
        return level
    known = ", ".join(f"{level.agreement:g}" for level in levels) or "none"
    nearest = strictest_level(levels, agreement)
    substitute(fallback, f"agreement {agreement:g} is not a level {owner} calibrated (it has {known})",
               f"level {nearest.agreement:g}" if nearest is not None else "the full model (exits off)")
    return nearest


def default_keep_schedule(num_blocks: int) -> tuple[tuple[int, float], ...]:
    """A common schedule for six blocks (70% of the tokens after block 2, 50% after
    block 4), scaled to the model's depth."""
    first, second = max(1, round(num_blocks / 3)), round(2 * num_blocks / 3)
    return ((first, 0.7), (second, 0.5)) if first < second < num_blocks else ((first, 0.7),) if first < num_blocks else ()


@dataclass(frozen=True)
class Budget:
    """latency_ms: the deadline for one input; memory_mb: the cap on resident model memory."""

    latency_ms: float | None = None
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "memory_mb"):
            value = getattr(self, name)
            if value is not None:
                real(f"budget {name}", value, 0.0, 1e12, low_open=True)


def _shifted_exps(logits: np.ndarray) -> list[float]:
    """exp(logit - max) of one answer's classes, in Python floats: numpy's reductions cost ~5-10 us
    each on a vector this short, and this runs after every exit."""
    values = logits.tolist()
    top = max(values)
    return [math.exp(v - top) for v in values]


def softmax(logits: np.ndarray) -> np.ndarray:
    if logits.ndim == 1 and logits.size <= 64:  # one answer's classes
        exps = _shifted_exps(logits)
        total = sum(exps)
        return np.array([e / total for e in exps], dtype=logits.dtype)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denominator) if denominator > 0 else 0.0


def classification_confidence(logits: np.ndarray) -> float:
    """Max softmax probability (the "softmax response" of the early-exit literature), in Python
    floats (computed with numpy it was a fifth of the runtime's own per-request time)."""
    return 1.0 / sum(_shifted_exps(logits))


def should_exit(confidence: float | None, threshold: float | None) -> bool:
    return confidence is not None and threshold is not None and confidence >= threshold
