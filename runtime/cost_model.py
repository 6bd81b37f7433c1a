"""Predicted cost of a segment from a measurement on this device: fixed + per-token milliseconds.

An encoder block's latency on a CPU is close to linear in tokens up to a few hundred
(docs/platform-facts.md), so two token counts fix the line. Without a device
profile, the runtime measures one block and one exit at load time when a
latency budget asks for predictions; every block of a model shares one shape, hence one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LinearCost:
    fixed_ms: float
    per_token_ms: float

    def predict(self, tokens: int) -> float:
        return self.fixed_ms + self.per_token_ms * tokens

    @staticmethod
    def through(first: tuple[int, float], second: tuple[int, float]) -> "LinearCost":
        """The line through two (tokens, ms) measurements, never sloping down nor below zero."""
        (n0, t0), (n1, t1) = first, second
        per_token = max((t1 - t0) / (n1 - n0), 0.0)
        return LinearCost(fixed_ms=max(t0 - per_token * n0, 0.0), per_token_ms=per_token)


def measure_linear_cost(run: Callable[[int], object], token_counts: tuple[int, int] = (8, 64),
                        repeats: int = 15) -> LinearCost:
    """The 90th percentile of `run(tokens)` at two token counts, after one warm-up each.

    A deadline guard that plans on the median runs over whenever a block runs slower than usual,
    which on a shared two-core machine is often; planning on p90 trades a little depth for it.
    """
    tails = []
    for tokens in token_counts:
        run(tokens)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(tokens)
            samples.append((time.perf_counter() - t0) * 1000)
        tails.append(float(np.percentile(samples, 90)))
    return LinearCost.through((token_counts[0], tails[0]), (token_counts[1], tails[1]))
