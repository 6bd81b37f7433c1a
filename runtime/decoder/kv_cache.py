"""The KV cache of a decoder package: per block, keys and values of the tokens it keeps.

Arrays are [batch, kv_heads, tokens, head_dim] as the block graphs take and return them, with each
entry's position beside them. Blocks may keep different tokens: a pruned prompt leaves the deeper
blocks fewer entries (AIM-style pruning inside the layer stack), and positions stay the original
ones, so rotary embeddings stay right. Block 0 always holds every token. Rolling back (a rejected
speculative draft) drops every entry at or after a position, in every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class KVCache:
    num_blocks: int
    keys: list[np.ndarray | None] = field(default_factory=list)
    values: list[np.ndarray | None] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = [None] * self.num_blocks
            self.values = [None] * self.num_blocks
            self.positions = [np.zeros(0, np.int64) for _ in range(self.num_blocks)]

    def length(self, block: int = 0) -> int:
        return int(len(self.positions[block]))

    def next_position(self) -> int:
        first = self.positions[0]
        return int(first[-1]) + 1 if len(first) else 0

    def store(self, block: int, key: np.ndarray, value: np.ndarray, new_positions: np.ndarray) -> None:
        """The block's present keys and values: its past with entries for `new_positions` appended."""
        self.keys[block], self.values[block] = key, value
        self.positions[block] = np.concatenate([self.positions[block], new_positions.astype(np.int64)])

    def roll_back(self, position: int) -> None:
        """Forget every entry at or after `position`, in every block."""
        for b in range(self.num_blocks):
            kept = int(np.searchsorted(self.positions[b], position))
            if kept < len(self.positions[b]):
                self.keys[b] = np.ascontiguousarray(self.keys[b][:, :, :kept])
                self.values[b] = np.ascontiguousarray(self.values[b][:, :, :kept])
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
        return sum(int(k.nbytes) + int(v.nbytes) for k, v in zip(self.keys, self.values) if k is not None)


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
