"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arguments import real, whole


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax); otherwise softmax(logits / temperature) restricted to the
    top_k most likely tokens (0: all) and to the smallest set whose probability reaches top_p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        real("temperature (0: greedy)", self.temperature, 0.0, 1e6)
        whole("top_k (0: off)", self.top_k, 0, 1 << 31)
        real("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if self.seed is not None:
            whole("seed", self.seed, 0, 2**63 - 1)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    weights = np.exp(shifted)
    return weights / weights.sum()


def top2_margin(logits: np.ndarray) -> float:
    """CALM's softmax response: top-1 minus top-2 probability."""
    top = np.partition(logits, -2)[-2:]
    shifted = logits.astype(np.float64) - top[1]
    total = np.exp(shifted).sum()
    return float((1.0 - np.exp(float(top[0]) - float(top[1]))) / total)


def top_probability(logits: np.ndarray) -> float:
    peak = float(logits.max())
    return float(1.0 / np.exp(logits.astype(np.float64) - peak).sum())


def token_log_probability(logits: np.ndarray, token: int) -> float:
    """In float32 with the peak shifted to 0 (terms in (0, 1], pairwise summed to ~1e-6): a fraction
    of a 49k-entry float64 pass, which every decoded token pays."""
    shifted = logits - logits.max()
    chosen = float(shifted[token])
    return chosen - float(np.log(np.exp(shifted, out=shifted).sum()))


def choose_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k:
        cut = np.partition(scaled, -sampling.top_k)[-sampling.top_k]
        scaled = np.where(scaled >= cut, scaled, -np.inf)
    probs = probabilities(scaled)
    if sampling.top_p < 1:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        kept = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[kept] = probs[kept]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))
