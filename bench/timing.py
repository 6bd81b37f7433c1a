"""Latency statistics: medians and tails, never a single number from a single run."""

from __future__ import annotations

import numpy as np


def latency_summary(milliseconds: list[float]) -> dict:
    values = np.asarray(milliseconds, dtype=float)
    return {
        "runs": int(len(values)),
        "mean_ms": round(float(values.mean()), 4),
        "p50_ms": round(float(np.percentile(values, 50)), 4),
        "p90_ms": round(float(np.percentile(values, 90)), 4),
        "p99_ms": round(float(np.percentile(values, 99)), 4),
    }
