"""What a run returns: the answer, how sure it is, and a trace of what ran."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Trace:
    segments: tuple[str, ...]
    tokens_per_block: tuple[int, ...]
    exit_after_block: int  # blocks run before answering; num_blocks means full depth
    milliseconds: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0
    truncated: bool = False
    thresholds_level: float | None = None
    deadline_cut: bool = False  # the deadline guard answered from the best exit reached
    restarts: int = 0  # low confidence made the run start again at a stronger operating point
    precision: str = "fp32"  # the precision variant that produced the answer
    predicted_ms: float | None = None  # what the device profile predicted for the calls made
    profile: str | None = None  # which device profile predicted it (target-fingerprint)


@dataclass(frozen=True)
class Result:
    label: str | None
    probabilities: np.ndarray | None
    embedding: np.ndarray | None
    confidence: float | None
    trace: Trace

    def to_dict(self) -> dict:
        out: dict = {"confidence": self.confidence, "exit_after_block": self.trace.exit_after_block}
        if self.label is not None:
            out["label"] = self.label
            out["probabilities"] = [float(p) for p in self.probabilities]
        if self.embedding is not None:
            out["embedding"] = [float(x) for x in self.embedding]
        out["trace"] = {
            "segments": list(self.trace.segments), "tokens_per_block": list(self.trace.tokens_per_block),
            "milliseconds": self.trace.milliseconds, "total_ms": self.trace.total_ms,
            "truncated": self.trace.truncated, "thresholds_level": self.trace.thresholds_level,
            "deadline_cut": self.trace.deadline_cut, "restarts": self.trace.restarts,
            "precision": self.trace.precision, "predicted_ms": self.trace.predicted_ms,
            "profile": self.trace.profile,
        }
        return out
