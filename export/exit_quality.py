"""How exits answer compared with the full model: confidences, agreement, and what a calibrated
cascade does on a set of examples."""

from __future__ import annotations

import numpy as np
import torch

from ..manifest import ExitThresholds
from ..runtime.policy import EMBEDDING_AGREES_AT, softmax
from .thresholds import simulate_level

# An embedding exit "agrees" with the full model when their cosine similarity reaches this.


@torch.no_grad()
def exit_outputs(exit_modules: dict[int, torch.nn.Module], per_exit: dict[int, torch.Tensor]) -> dict[int, np.ndarray]:
    return {depth: module.from_features(per_exit[depth]).numpy() for depth, module in exit_modules.items()}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def judge(task: str, outputs: dict[int, np.ndarray], final: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, exits] confidence and agreement with the full model, exits in depth order.

    Classification: max probability; agreement = same label. Embeddings: cosine to the previous
    exit's embedding (NaN at the first exit, which therefore never answers); agreement = cosine to
    the full model's embedding >= EMBEDDING_AGREES_AT (the one definition: runtime/policy.py).
    """
    depths = sorted(outputs)
    confidence = np.empty((len(final), len(depths)))
    agrees = np.empty((len(final), len(depths)), dtype=bool)
    for e, depth in enumerate(depths):
        out = outputs[depth]
        if task == "text-classification":
            confidence[:, e] = softmax(out).max(-1)
            agrees[:, e] = out.argmax(-1) == final.argmax(-1)
        else:
            confidence[:, e] = cosine_rows(out, outputs[depths[e - 1]]) if e > 0 else np.nan
            agrees[:, e] = cosine_rows(out, final) >= EMBEDDING_AGREES_AT
    return confidence, agrees


def evaluate(task: str, outputs: dict[int, np.ndarray], final: np.ndarray, labels: np.ndarray | None,
             levels: tuple[ExitThresholds, ...], num_blocks: int, source: str, lengths: np.ndarray | None = None) -> dict:
    """Per-exit quality and the realised behaviour of every calibrated level on these examples."""
    depths = sorted(outputs)
    confidence, agrees = judge(task, outputs, final)
    record: dict = {"data": source, "examples": int(len(final)), "exits": []}
    if labels is not None and task == "text-classification":
        record["final_accuracy"] = round(float((final.argmax(-1) == labels).mean()), 6)
    for e, depth in enumerate(depths):
        entry = {"after_block": depth, "agreement_with_final": round(float(agrees[:, e].mean()), 6)}
        if task == "text-classification" and labels is not None:
            entry["accuracy"] = round(float((outputs[depth].argmax(-1) == labels).mean()), 6)
        if task == "feature-extraction":
            entry["mean_cosine_to_final"] = round(float(cosine_rows(outputs[depth], final).mean()), 6)
        record["exits"].append(entry)
    record["levels"] = []
    depth_of = np.array(depths + [num_blocks], dtype=float)
    for level in levels:
        outcome = simulate_level(confidence, agrees, level, lengths)
        entry = {
            "agreement": level.agreement,
            "realized_agreement": round(1.0 - outcome.disagreements / len(final), 6),
            "mean_depth": round(float(depth_of[outcome.exit_index].mean()), 4),
            "exit_shares": [round(float(s), 6) for s in
                            np.bincount(outcome.exit_index, minlength=len(depths) + 1) / len(final)],
        }
        if task == "text-classification" and labels is not None:
            answers = np.stack([outputs[d].argmax(-1) for d in depths] + [final.argmax(-1)], axis=1)
            chosen = answers[np.arange(len(final)), outcome.exit_index]
            entry["accuracy"] = round(float((chosen == labels).mean()), 6)
        record["levels"].append(entry)
    return record
