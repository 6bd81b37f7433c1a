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
from ..manifest import Manifest

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


def memory_need(manifest: Manifest) -> MemoryNeed:
    weights = sum(f.bytes for f in manifest.files if f.path.endswith((".bin", ".onnx")))
    tokens, hidden, heads = manifest.tokenizer.max_length, manifest.model.hidden_size, manifest.model.num_heads
    activations = FLOAT_BYTES * (tokens * hidden * (2 + FFN_EXPANSION) + 2 * heads * tokens * tokens)
    return MemoryNeed(weights / 2**20, ARENA_FACTOR * activations / 2**20)


def check_memory_budget(manifest: Manifest, memory_mb: float | None) -> MemoryNeed:
    need = memory_need(manifest)
    if memory_mb is not None and memory_mb < need.total_mb:
        raise BudgetError(f"memory_mb={memory_mb:g} is below what this package needs "
                          f"({need.weights_mb:.0f} MB weights + {need.activations_mb:.0f} MB activations at "
                          f"{manifest.tokenizer.max_length} tokens); give at least {math.ceil(need.total_mb)} MB")
    return need
