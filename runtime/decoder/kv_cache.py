"""The KV cache of a decoder package: per block, keys and values of the tokens it keeps.

Arrays are [batch, kv_heads, tokens, head_dim] as the block graphs take and return them, with each
entry's position beside them. Blocks may keep different tokens: a pruned prompt leaves the deeper
blocks fewer entries (AIM-style pruning inside the layer stack), and positions stay the original
ones, so rotary embeddings stay right. Block 0 always holds every token. Rolling back (a rejected
speculative draft) drops every entry at or after a position, in every block.

With a capacity, each block's entries live at the front of one buffer of that many positions,
allocated once per generate() call. GroupQueryAttention spans then write new entries into it in
place (the same buffer bound as their past and present), so a decode step copies no cache at all;
rolling back only shortens. Without one (pruned prompts, calibration), each block holds an array of
exactly its entries, replaced by the graph's present output every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class KVCache:
    num_blocks: int
    capacity: int = 0  # > 0: preallocated buffers of this many positions, grown only if a call outruns it
    positions: list[np.ndarray] = field(init=False)
    # onnxruntime bindings onto this cache's buffers, made once per graph; buffers that grow drop them
    bindings: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._keys: list[np.ndarray | None] = [None] * self.num_blocks
        self._values: list[np.ndarray | None] = [None] * self.num_blocks
        self._buffer_bytes: int | None = None  # nbytes() of a preallocated cache, until a buffer changes
        self.positions = [np.zeros(0, np.int64) for _ in range(self.num_blocks)]

    def length(self, block: int = 0) -> int:
        return int(len(self.positions[block]))

    def next_position(self) -> int:
        first = self.positions[0]
        return int(first[-1]) + 1 if len(first) else 0

    def entries(self, block: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The block's keys and values, exactly its entries (contiguous); None before any."""
        key, value = self._keys[block], self._values[block]
        if key is None or value is None:
            return None
        if not self.capacity:
            return key, value
        n = self.length(block)
        return np.ascontiguousarray(key[:, :, :n]), np.ascontiguousarray(value[:, :, :n])

    def buffers(self, block: int, heads: int, head_dim: int, needed: int) -> tuple[np.ndarray, np.ndarray]:
        """The block's preallocated key and value buffers, holding at least `needed` positions."""
        key = self._keys[block]
        if key is None or key.shape[2] < needed:
            size = max(needed, self.capacity, 2 * key.shape[2] if key is not None else 0)
            grown = [np.zeros((1, heads, size, head_dim), np.float32) for _ in range(2)]
            n = self.length(block)
            if key is not None:  # a call that outran its capacity: the bindings point at the old buffers
                grown[0][:, :, :n], grown[1][:, :, :n] = key[:, :, :n], self._values[block][:, :, :n]
                self.bindings.clear()
            self._keys[block], self._values[block] = grown
            self._buffer_bytes = None
        return self._keys[block], self._values[block]

    def wrote(self, blocks: range, new_positions: np.ndarray) -> None:
        """The new tokens' entries follow these blocks' others (written in place by a graph, or stored):
        blocks a span covers hold the same positions, so one array serves them all, never changed in place."""
        grown = np.concatenate([self.positions[blocks[0]], new_positions.astype(np.int64)])
        for b in blocks:
            self.positions[b] = grown

    def store(self, block: int, key: np.ndarray, value: np.ndarray, new_positions: np.ndarray) -> None:
        """The block's present keys and values: its past with entries for `new_positions` appended."""
        if self.capacity:
            n, total = self.length(block), key.shape[2]
            key_buffer, value_buffer = self.buffers(block, key.shape[1], key.shape[3], total)
            key_buffer[:, :, n:total], value_buffer[:, :, n:total] = key[:, :, n:], value[:, :, n:]
        else:
            self._keys[block], self._values[block] = key, value
        self.wrote(range(block, block + 1), new_positions)

    def roll_back(self, position: int) -> None:
        """Forget every entry at or after `position`, in every block."""
        for b in range(self.num_blocks):
            kept = int(np.searchsorted(self.positions[b], position))
            if kept < len(self.positions[b]):
                if not self.capacity:  # a buffer's later entries are simply written over
                    self._keys[b] = np.ascontiguousarray(self._keys[b][:, :, :kept])
                    self._values[b] = np.ascontiguousarray(self._values[b][:, :, :kept])
                self.positions[b] = self.positions[b][:kept]

    def contiguous(self, start: int, stop: int, new_positions: np.ndarray) -> bool:
        """Blocks start..stop-1 each hold positions 0..n-1 and the new tokens come next: the layout
        GroupQueryAttention implies (it takes positions from the cache's length). A deeper block
        holds a subset of a shallower one's entries (pruning only drops, going deeper), so equal
        first and last lengths, with the first ending at n-1, settle it: one check per step, not one
        per block."""
        n = self.length(start)
        return (self.length(stop - 1) == n and (n == 0 or int(self.positions[start][-1]) == n - 1)
                and int(new_positions[0]) == n and int(new_positions[-1]) == n + len(new_positions) - 1)

    def uniform_from(self, start: int) -> list[int]:
        """Blocks after which the entry count changes (spans must not cross them)."""
        return [b for b in range(start + 1, self.num_blocks) if self.length(b) != self.length(b - 1)]

    def nbytes(self) -> int:
        """What the cache holds in memory: its buffers whole, when preallocated (asked every step)."""
        if self.capacity and self._buffer_bytes is not None:
            return self._buffer_bytes
        held = sum(int(k.nbytes) + int(v.nbytes) for k, v in zip(self._keys, self._values) if k is not None)
        if self.capacity:
            self._buffer_bytes = held
        return held


MIN_PRUNED_FRACTION = 0.1


def kv_need_mb(num_blocks: int, per_block_mb: float, prompt_tokens: int, new_tokens: int,
               prune: tuple[tuple[int, float], ...]) -> float:
    """The cache at its largest: every block holds the new tokens; after a pruning point, only the
    kept share of the prompt."""
    entries, kept, at = 0.0, float(prompt_tokens), 0
    for point, fraction in (*prune, (num_blocks, 1.0)):
        entries += (point - at) * (kept + new_tokens)
        kept, at = min(kept, max(1.0, np.ceil(fraction * prompt_tokens))), point
    return entries * per_block_mb
