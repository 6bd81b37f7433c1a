"""Exit and restart thresholds for a precision variant, calibrated against the fp32 full model.

A quantized model's confidences differ from the fp32 model's, so the package's thresholds do not
carry over. The variant's exits and its own final answer are the stages of a cascade whose last
resort is a restart at fp32; the same calibration as export picks one threshold for all of them
(export/thresholds.py), with stage costs in the variant's blocks.

The variant's final stage asks a different question from an exit. An exit may disagree with the full
model because it saw fewer blocks; the variant's full-depth answer disagrees only when the
quantization noise in its logits outweighs its margin. Held to the exits' confidence scale, the final
stage restarted every input no exit was sure of: 21% of SST-2 dev sentences at 0.99 for int8, though
int8 and fp32 agree on 98.6% of them. So for a classifier the final stage's confidence is put on the
scale of "this answer is the fp32 answer" before the common threshold is chosen: with logit noise of
scale s between the variant and fp32 (measured on the calibration data, unlabelled), a top-1 margin m
survives with probability about Phi(m / s), and a max probability p bounds the margin from below by
logit(p). The family of thresholds stays one-dimensional and nested, so the calibration and its
guarantee are unchanged; the runtime still compares p with a stored threshold (mapped back), and needs
nothing new. Measured on SST-2 dev at 0.99: int8 restarts fell from 21% to 5.3%, a mixed plan's from
24% to 3.2%, with the calibration's disagreement count unchanged.

An embedding's final answer has no confidence at all, so nothing could decide a restart: an
embedding variant runs alone at full depth, and a level holds only if its answers agree with fp32's
often enough outright (the same Clopper-Pearson count as every level). The final stage's threshold
then only says so: 0.0 where the level holds (every answer kept), None where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import norm

from ..export.exit_quality import cosine_rows, judge
from ..export.thresholds import AGREEMENT_LEVELS, allowed_disagreements, calibrate_level
from ..manifest import ExitThresholds, Manifest, Segment
from ..runtime.policy import embedding_agreement_cosine
from ..runtime.sessions import open_session


def onnx_graphs(root: Path, precision: str) -> Callable[[Segment], Any]:
    return lambda segment: open_session(root / segment.graph(precision))


def variant_outputs(open_graph: Callable[[Segment], Any], manifest: Manifest,
                    feeds: tuple[dict[str, np.ndarray], ...]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Every exit's and the full-depth graph's outputs for the calibration batches, at one precision.

    open_graph: a segment's graph at that precision (an onnxruntime session or a LiteRT graph)."""
    span = manifest.full_depth()
    needed = [s for s in manifest.segments if s.kind in ("embed", "block", "exit") or s is span]
    graph = {s.name: open_graph(s) for s in needed}
    embed = next((s for s in manifest.segments if s.kind == "embed"), None)  # None: a whole-model package
    exits = {e.after_block: manifest.segment(e.segment) for e in manifest.exits}
    per_exit: dict[int, list[np.ndarray]] = {depth: [] for depth in exits}
    final = []
    for feed in feeds:
        bias = feed["attention_bias"]
        hidden = graph[embed.name].run(None, {k: feed[k] for k in embed.inputs})[0] if exits else None
        for depth, block in enumerate(manifest.blocks() if exits else (), start=1):
            hidden = graph[block.name].run(None, {"hidden": hidden, "attention_bias": bias})[0]
            if depth in exits:
                per_exit[depth].append(graph[exits[depth].name].run(None, {"hidden": hidden, "attention_bias": bias})[0])
        final.append(graph[span.name].run(None, {k: feed[k] for k in span.inputs})[0])
    return {d: np.concatenate(o) for d, o in per_exit.items()}, np.concatenate(final)


def feed_lengths(feeds: tuple[dict[str, np.ndarray], ...]) -> np.ndarray:
    """Each input's token count, in the order variant_outputs returns outputs."""
    return np.concatenate([(feed["attention_bias"] == 0).sum(1) for feed in feeds])


@dataclass(frozen=True)
class VariantCalibration:
    thresholds: tuple[ExitThresholds, ...]
    final_logit_noise: float | None  # the scale the restart threshold was set on (None: exits' scale)

    def quality(self, task: str) -> dict[str, float]:
        """What the variant's quality record says of it (a classifier's noise scale)."""
        return {"final_logit_noise": round(self.final_logit_noise or 0.0, 6)} if task == "text-classification" else {}


def calibrate_variant(manifest: Manifest, per_exit: dict[int, np.ndarray], final: np.ndarray,
                      fp32_final: np.ndarray, speedup: float, lengths: np.ndarray | None = None
                      ) -> VariantCalibration:
    """speedup: fp32 latency / variant latency, which prices a restart in the variant's blocks;
    lengths: each input's token count, for thresholds per length range."""
    blocks = manifest.model.num_blocks
    if manifest.model.task != "text-classification":
        agrees = cosine_rows(final, fp32_final) >= embedding_agreement_cosine(manifest)
        return VariantCalibration(tuple(_alone(agrees, len(per_exit), blocks, speedup, level)
                                        for level in AGREEMENT_LEVELS), None)
    stages = {**per_exit, blocks: final}
    confidence, agrees = judge(manifest.model.task, stages, fp32_final)
    depths = sorted(stages)
    restart_cost = blocks + blocks * max(speedup, 1e-3)
    noise = logit_noise_scale(final, fp32_final) if manifest.model.task == "text-classification" else None
    if noise is not None:
        confidence[:, -1] = agreement_scale(confidence[:, -1], noise)
    levels = (calibrate_level(confidence, agrees, depths, restart_cost, level, lengths) for level in AGREEMENT_LEVELS)
    return VariantCalibration(tuple(_final_threshold_as_confidence(level, noise) for level in levels), noise)


def _alone(agrees: np.ndarray, exits: int, blocks: int, speedup: float, level: float) -> ExitThresholds:
    """A level for a variant whose exits stay off and whose every answer is kept, if that holds it."""
    holds = int((~agrees).sum()) <= allowed_disagreements(len(agrees), level)
    share = round(float(agrees.mean()), 6) if len(agrees) else 0.0
    return ExitThresholds(agreement=level, thresholds=(*(None,) * exits, 0.0 if holds else None),
                          exit_shares=(*(0.0,) * exits, 1.0 if holds else 0.0, 0.0 if holds else 1.0),
                          expected_mean_depth=float(blocks) if holds else round(blocks + blocks * max(speedup, 1e-3), 4),
                          calibration_agreement=share if holds else 1.0)


NOISE_QUANTILE = 0.99  # the scale is set by the tail, where a flip happens, not by the typical input


def logit_noise_scale(final: np.ndarray, fp32_final: np.ndarray) -> float | None:
    """s: how far the variant moves the gap between its top logit and each other one, as a normal
    scale fitted to the 99th percentile of those moves (None: the variant is exact here)."""
    top = final.argmax(-1)
    moved = final - fp32_final
    gaps = np.abs(moved[np.arange(len(moved)), top][:, None] - moved)
    gaps = gaps[np.arange(gaps.shape[1])[None, :] != top[:, None]]
    if gaps.size == 0 or not np.isfinite(gaps).all() or np.quantile(gaps, NOISE_QUANTILE) <= 0:
        return None
    return float(np.quantile(gaps, NOISE_QUANTILE) / norm.ppf(0.5 + NOISE_QUANTILE / 2))


def agreement_scale(probability: np.ndarray, noise: float) -> np.ndarray:
    """Phi(logit(p) / s): the chance a top-1 answer of probability p survives logit noise of scale s."""
    p = np.clip(probability, 1e-12, 1 - 1e-12)
    return norm.cdf(np.log(p / (1 - p)) / noise)


def confidence_scale(agreement: float, noise: float) -> float:
    """The inverse of agreement_scale: the max probability the runtime compares with."""
    margin = noise * float(norm.ppf(min(max(agreement, 1e-12), 1 - 1e-12)))
    return float(1.0 / (1.0 + np.exp(-margin)))


def _final_threshold_as_confidence(level: ExitThresholds, noise: float | None) -> ExitThresholds:
    if noise is None:
        return level

    def mapped(thresholds: tuple[float | None, ...]) -> tuple[float | None, ...]:
        last = thresholds[-1]
        return (*thresholds[:-1], None if last is None else confidence_scale(last, noise))
    ranges = tuple(replace(r, thresholds=mapped(r.thresholds)) for r in level.by_length)
    return replace(level, thresholds=mapped(level.thresholds), by_length=ranges)
