"""Exit and restart thresholds for a precision variant, calibrated against the fp32 full model.

A quantized model's confidences differ from the fp32 model's, so the package's thresholds do not
carry over. The variant's exits and its own final answer are the stages of a cascade whose last
resort is a restart at fp32; the same calibration as export picks one threshold for all of them
(export/thresholds.py), with stage costs in the variant's blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..export.exit_quality import judge
from ..export.thresholds import AGREEMENT_LEVELS, calibrate_level
from ..manifest import ExitThresholds, Manifest, Segment
from ..runtime.sessions import open_session


def onnx_graphs(root: Path, precision: str) -> Callable[[Segment], Any]:
    return lambda segment: open_session(root / segment.graph(precision))


def variant_outputs(open_graph: Callable[[Segment], Any], manifest: Manifest,
                    feeds: tuple[dict[str, np.ndarray], ...]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Every exit's and the full-depth graph's outputs for the calibration batches, at one precision.

    open_graph: a segment's graph at that precision (an onnxruntime session or a LiteRT graph)."""
    span = manifest.span_covering(("embed", *(b.name for b in manifest.blocks()), "head"))
    needed = [s for s in manifest.segments if s.kind in ("embed", "block", "exit") or s is span]
    graph = {s.name: open_graph(s) for s in needed}
    embed = next(s for s in manifest.segments if s.kind == "embed")
    exits = {e.after_block: manifest.segment(e.segment) for e in manifest.exits}
    per_exit: dict[int, list[np.ndarray]] = {depth: [] for depth in exits}
    final = []
    for feed in feeds:
        bias = feed["attention_bias"]
        hidden = graph[embed.name].run(None, {k: feed[k] for k in embed.inputs})[0]
        for depth, block in enumerate(manifest.blocks(), start=1):
            hidden = graph[block.name].run(None, {"hidden": hidden, "attention_bias": bias})[0]
            if depth in exits:
                per_exit[depth].append(graph[exits[depth].name].run(None, {"hidden": hidden, "attention_bias": bias})[0])
        final.append(graph[span.name].run(None, {k: feed[k] for k in span.inputs})[0])
    return {d: np.concatenate(o) for d, o in per_exit.items()}, np.concatenate(final)


def feed_lengths(feeds: tuple[dict[str, np.ndarray], ...]) -> np.ndarray:
    """Each input's token count, in the order variant_outputs returns outputs."""
    return np.concatenate([(feed["attention_bias"] == 0).sum(1) for feed in feeds])


def calibrate_variant(manifest: Manifest, per_exit: dict[int, np.ndarray], final: np.ndarray,
                      fp32_final: np.ndarray, speedup: float, lengths: np.ndarray | None = None
                      ) -> tuple[ExitThresholds, ...]:
    """speedup: fp32 latency / variant latency, which prices a restart in the variant's blocks;
    lengths: each input's token count, for thresholds per length range."""
    blocks = manifest.model.num_blocks
    stages = {**per_exit, blocks: final}
    confidence, agrees = judge(manifest.model.task, stages, fp32_final)
    depths = sorted(stages)
    restart_cost = blocks + blocks * max(speedup, 1e-3)
    return tuple(calibrate_level(confidence, agrees, depths, restart_cost, level, lengths) for level in AGREEMENT_LEVELS)
