"""Latency of a whole graph on this device: the measurement plans are predicted against and checked by."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..manifest import Manifest
from ..runtime.sessions import open_session

PLAN_TOKENS = 64  # the token count node latencies are measured and plans predicted at
WARMUP = 20
WARMUP_SECONDS = 1.0


def fp32_latency_ms(package_root: Path, manifest: Manifest, tokens: int = PLAN_TOKENS) -> float:
    """Median latency of the package's fp32 full-depth graph at `tokens` tokens, batch 1."""
    span = manifest.full_depth()
    return full_graph_latency_ms(package_root / span.graph("fp32"), manifest, tokens)


def full_graph_latency_ms(graph_source: Path | bytes, manifest: Manifest, tokens: int = PLAN_TOKENS,
                          repeats: int = 60) -> float:
    graph = open_session(graph_source)
    feeds = {"input_ids": np.full((1, tokens), manifest.tokenizer.pad_id, np.int64),
             "token_type_ids": np.zeros((1, tokens), np.int64), "attention_bias": np.zeros((1, tokens), np.float32)}
    return median_run_ms(graph, {i.name: feeds[i.name] for i in graph.get_inputs()}, repeats)


def median_run_ms(graph, feeds: dict[str, np.ndarray], repeats: int, warmup: int = WARMUP,
                  warmup_seconds: float = WARMUP_SECONDS) -> float:
    """Median milliseconds of `graph.run(feeds)`, after warm-up runs.

    A fresh session's first runs grow its arena and fault in its weights: measured here, 5 warm-ups
    left the median of the next 30 runs up to 25% high, and the first model timed in a fresh process
    still ran 23-29% slow after 20 warm-ups (0.2 s), so warming up also lasts a minimum time.
    """
    deadline = time.perf_counter() + warmup_seconds
    runs = 0
    while runs < warmup or time.perf_counter() < deadline:
        graph.run(None, feeds)
        runs += 1
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        graph.run(None, feeds)
        samples.append((time.perf_counter() - start) * 1000)
    return float(np.median(samples))


def paired_latency_ms(first: Path | bytes, second: Path | bytes, manifest: Manifest, tokens: int = PLAN_TOKENS,
                      rounds: int = 3, repeats: int = 40) -> tuple[float, float]:
    """Median latencies of two graphs measured in alternating rounds, so that the machine's drift
    (tens of percent within minutes here) falls on both alike; their ratio is what a plan predicts."""
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for index, graph in enumerate((first, second)):
            samples[index].append(full_graph_latency_ms(graph, manifest, tokens, repeats))
    return float(np.median(samples[0])), float(np.median(samples[1]))
