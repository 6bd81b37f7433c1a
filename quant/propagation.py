"""How much an error entering each block grows by the model's output.

Measured on MiniLM-SST2: lowering one node of block 0 or 1 to int8 costs 10-100x more output KL
than the same node in block 4 or 5, although its local rounding noise is no larger; the noise of
an early block is carried and amplified by every block after it. The value-driven statistics
cannot see that, so the proxy multiplies each node's local noise by its block's gain: the output
error per unit of relative noise injected into the hidden state entering that block. That costs one
pass of the remaining blocks per block (a few full-model passes), not one per node and candidate.
"""

from __future__ import annotations

import numpy as np

from ..runtime.package import Package
from ..runtime.sessions import open_session
from .output_error import output_error

NOISE = 0.02  # relative standard deviation of the injected noise


def block_gains(package: Package, feeds: tuple[dict[str, np.ndarray], ...], reference: np.ndarray,
                seed: int = 0) -> list[float]:
    """gains[k]: output error per unit relative noise variance entering block k (k = blocks: the head)."""
    manifest = package.manifest
    if manifest.is_whole:  # one graph: no block boundary to inject noise at, each node's own noise counts
        return [1.0]
    graphs = {s.name: open_session(package.path(s.graph("fp32"))) for s in manifest.segments
              if s.kind in ("embed", "block", "head")}
    embed = next(s for s in manifest.segments if s.kind == "embed")
    head = next(s for s in manifest.segments if s.kind == "head")
    blocks = manifest.blocks()
    rng = np.random.default_rng(seed)
    outputs: list[list[np.ndarray]] = [[] for _ in range(len(blocks) + 1)]
    for feed in feeds:
        bias = feed["attention_bias"]
        hidden = graphs[embed.name].run(None, {k: feed[k] for k in embed.inputs})[0]
        states = [hidden]
        for block in blocks:
            states.append(graphs[block.name].run(None, {"hidden": states[-1], "attention_bias": bias})[0])
        for start in range(len(blocks) + 1):
            state = states[start]
            scale = NOISE * np.sqrt(np.mean(state ** 2, axis=-1, keepdims=True))
            state = (state + scale * rng.standard_normal(state.shape)).astype(np.float32)
            for block in blocks[start:]:
                state = graphs[block.name].run(None, {"hidden": state, "attention_bias": bias})[0]
            feeds_of_head = {"hidden": state, "attention_bias": bias}
            outputs[start].append(graphs[head.name].run(None, {k: feeds_of_head[k] for k in head.inputs})[0])
    return [output_error(manifest.model.task, reference, np.concatenate(o)) / NOISE ** 2 for o in outputs]


def gain_of(node_name: str, gains: list[float]) -> float:
    """The gain for a node of the full-depth graph, by where its name says it sits."""
    if node_name.startswith("/blocks."):
        return gains[int(node_name.split(".")[1].split("/")[0])]
    if node_name.startswith("/head"):
        return gains[-1]
    return gains[0]
