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
    level_used: float | None = None  # the agreement level whose thresholds ran (None: exits off)
    level_requested: float | None = None  # the level the policy asked for
    deadline_cut: bool = False  # the deadline guard answered from the best exit reached
    restarts: int = 0  # low confidence made the run start again at a stronger operating point
    precision: str = "fp32"  # the precision variant that produced the answer
    precision_requested: str = "fp32"  # the one the policy asked to run first
    threads: int = 0  # intra-op threads the graphs ran on
    over_budget: bool = False  # took longer than the latency budget
    predicted_ms: float | None = None  # what the device profile predicted for the calls made
    profile: str | None = None  # which device profile predicted it (target-fingerprint)
    audited: bool = False  # this request is also being run at full depth by the audit
    outside_calibration: bool = False  # its token count lies outside the thresholds' calibration inputs'


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
            "truncated": self.trace.truncated, "level_used": self.trace.level_used,
            "level_requested": self.trace.level_requested, "precision_requested": self.trace.precision_requested,
            "threads": self.trace.threads, "over_budget": self.trace.over_budget,
            "deadline_cut": self.trace.deadline_cut, "restarts": self.trace.restarts,
            "precision": self.trace.precision, "predicted_ms": self.trace.predicted_ms,
            "profile": self.trace.profile, "audited": self.trace.audited,
            "outside_calibration": self.trace.outside_calibration,
        }
        return out


@dataclass(frozen=True)
class GenerationTrace:
    mode: str
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    first_token_ms: float  # prompt in, first new token chosen
    total_ms: float
    stopped: str  # "eos" | "stop" | "length" | "deadline"
    kv_bytes: int  # the cache at its largest
    drafted: int = 0  # speculative: tokens the draft proposed
    accepted: int = 0  # speculative: drafted tokens the full model agreed with
    exit_blocks: tuple[int, ...] = ()  # early-exit: blocks run for each new token
    restarts: int = 0  # the answer was generated again at fp32 (low sequence confidence)
    restart_changed: bool = False  # ... and the new answer differs from the first
    first_min_log_prob: float | None = None  # the first answer's confidence, when it restarted
    plan: str = ""  # what first_token_ms / tokens_per_second budgets chose (precision, pruning)
    predicted_first_token_ms: float | None = None  # ... and what the device's costs predicted for it
    predicted_tokens_per_second: float | None = None
    level_used: float | None = None  # early-exit: the token-agreement level whose thresholds ran
    audited: bool = False  # this generation is also being scored at full depth by the audit

    @property
    def tokens_per_second(self) -> float:
        """New tokens after the first, per second of decoding (the first belongs to the prompt's time)."""
        decoding = (self.total_ms - self.first_token_ms) / 1000
        return (self.new_tokens - 1) / decoding if self.new_tokens > 1 and decoding > 0 else 0.0


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    log_probs: tuple[float, ...]  # of each new token under the distribution it was chosen from
    trace: GenerationTrace

    @property
    def mean_log_prob(self) -> float:
        return float(np.mean(self.log_probs)) if self.log_probs else 0.0

    @property
    def min_log_prob(self) -> float:
        return float(min(self.log_probs)) if self.log_probs else 0.0
