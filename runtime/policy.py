"""What the runtime may trade for speed: small frozen policies and the pure decisions they make."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Policy:
    """agreement: the calibrated level of agreement with the full model to hold (None: full depth).

    The runtime uses the strictest calibrated level at or above it; if the package has none, every
    input runs at full depth.
    """

    agreement: float | None = 0.99

    def __post_init__(self) -> None:
        if self.agreement is not None and not 0.5 <= self.agreement <= 1.0:
            raise InputError(f"policy agreement {self.agreement} must be between 0.5 and 1.0 (or None)")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denominator) if denominator > 0 else 0.0


def classification_confidence(logits: np.ndarray) -> float:
    """Max softmax probability (the "softmax response" of the early-exit literature)."""
    return float(softmax(logits).max())


def should_exit(confidence: float | None, threshold: float | None) -> bool:
    return confidence is not None and threshold is not None and confidence >= threshold
