"""The KV cache of a decoder package: per block, keys and values of every token kept so far.

Arrays are [batch, kv_heads, tokens, head_dim] as the block graphs take and return them. The cache
also keeps each entry's position (a pruned cache keeps original positions, so RoPE stays right)
and an additive attention bias (0 attend, PAD_BIAS never) that padding will use.
Truncation (a rejected speculative draft) and pruning (prompt tokens nobody attends to) are
slices along the token axis of every block at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class KVCache:
    num_blocks: int
    keys: list[np.ndarray | None] = field(default_factory=list)
    values: list[np.ndarray | None] = field(default_factory=list)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = [None] * self.num_blocks
            self.values = [None] * self.num_blocks

    def length(self, block: int = 0) -> int:
        key = self.keys[block]
        return 0 if key is None else int(key.shape[2])

    def next_position(self) -> int:
        return int(self.positions[-1]) + 1 if len(self.positions) else 0

    def store(self, block: int, key: np.ndarray, value: np.ndarray) -> None:
        self.keys[block], self.values[block] = key, value

    def add_positions(self, positions: np.ndarray) -> None:
        self.positions = np.concatenate([self.positions, positions.astype(np.int64)])

    def truncate(self, length: int) -> None:
        """Keep the first `length` entries of every block (and their positions)."""
        for i in range(self.num_blocks):
            if self.keys[i] is not None and self.keys[i].shape[2] > length:
                self.keys[i] = np.ascontiguousarray(self.keys[i][:, :, :length])
                self.values[i] = np.ascontiguousarray(self.values[i][:, :, :length])
        self.positions = self.positions[:length]

    def keep(self, indices: np.ndarray) -> None:
        """Keep only these entries (sorted token indices), in every block."""
        for i in range(self.num_blocks):
            if self.keys[i] is not None:
                self.keys[i] = np.ascontiguousarray(self.keys[i][:, :, indices])
                self.values[i] = np.ascontiguousarray(self.values[i][:, :, indices])
        self.positions = self.positions[indices]

    def nbytes(self) -> int:
        return sum(int(k.nbytes) + int(v.nbytes) for k, v in zip(self.keys, self.values) if k is not None)
