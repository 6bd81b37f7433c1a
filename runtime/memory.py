"""How much memory a loaded package needs, so a memory budget can be refused before loading.

Counted: the weights the sessions hold (every distinct tensor of the package once; all graphs
read from one shared weights file), and the activations of one input at the longest length the
tokenizer allows (hidden states with the feed-forward expansion, and attention scores/probabilities
for every head). onnxruntime's arena rounds allocations up, so activations are counted twice.
The benchmark measures the real peak RSS of `edgeinfer run` to check this model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import BudgetError
from ..manifest import Manifest, Segment

FLOAT_BYTES = 4
FFN_EXPANSION = 4
ARENA_FACTOR = 2.0


@dataclass(frozen=True)
class MemoryNeed:
    weights_mb: float
    activations_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.activations_mb


def memory_need(manifest: Manifest, graphs: list[tuple[Segment, str]] | None = None,
                litert: bool = False) -> MemoryNeed:
    """graphs: the (segment, precision) graphs a session may open; each onnxruntime session holds its
    own copy of the tensors it reads, so their resident bytes add up. Without them (or for packages
    before schema 1.3, which do not record them) every weight file of the package counts once.

    litert: the graphs run on LiteRT, where each precision's .tflite file is mapped once and XNNPACK
    packs its weights once into the weight cache (litert_graphs.py): the files of the precisions
    used count once (SST-2 MiniLM: a 108 MB file, the process grew by 92-110 MB)."""
    if litert and manifest.litert is not None:
        precisions = {p for _, p in graphs} if graphs else {"fp32"}
        weights = float(sum(f.bytes for f in manifest.files
                            if f.path in {manifest.litert.files[p] for p in precisions if p in manifest.litert.files}))
        return MemoryNeed(weights / 2**20, _activations_mb(manifest))
    resident = [s.graph_variant(p).resident_bytes for s, p in graphs] if graphs else [None]
    if all(r is not None for r in resident):
        weights = float(sum(resident))
    else:
        weights = float(sum(f.bytes for f in manifest.files if f.path.endswith((".bin", ".onnx"))))
    return MemoryNeed(weights / 2**20, _activations_mb(manifest))


def _activations_mb(manifest: Manifest) -> float:
    tokens, hidden, heads = manifest.tokenizer.max_length, manifest.model.hidden_size, manifest.model.num_heads
    activations = FLOAT_BYTES * (tokens * hidden * (2 + FFN_EXPANSION) + 2 * heads * tokens * tokens)
    return ARENA_FACTOR * activations / 2**20


def smallest_need(manifest: Manifest, litert: bool = False) -> tuple[str, MemoryNeed]:
    """The cheapest way to run this package at all: one precision's fused full graph, nothing else."""
    full = manifest.full_depth()
    if full is None:
        return "fp32", memory_need(manifest)
    precisions = list(manifest.litert.files) if litert and manifest.litert is not None else [v.precision for v in full.variants]
    options = [(p, memory_need(manifest, [(full, p)], litert)) for p in precisions]
    return min(options, key=lambda option: option[1].total_mb)


def check_memory_budget(manifest: Manifest, memory_mb: float | None,
                        graphs: list[tuple[Segment, str]] | None = None, litert: bool = False) -> MemoryNeed:
    need = memory_need(manifest, graphs, litert)
    if memory_mb is not None and memory_mb < need.total_mb:
        precision, least = smallest_need(manifest, litert)
        hint = (f"; the smallest way to run it, Policy(precision={precision!r}, agreement=None), needs "
                f"{math.ceil(least.total_mb)} MB" if least.total_mb < need.total_mb else "")
        raise BudgetError(f"memory_mb={memory_mb:g} is below what this policy needs "
                          f"({need.weights_mb:.0f} MB weights + {need.activations_mb:.0f} MB activations at "
                          f"{manifest.tokenizer.max_length} tokens); give at least {math.ceil(need.total_mb)} MB{hint}")
    return need
