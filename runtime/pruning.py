"""Token pruning between blocks: keep the tokens that receive the most attention.

Importance is the attention a token receives, averaged over heads and valid queries (the LTP /
PoWER-BERT score, arXiv 2107.00910 / 2001.08950), produced by every block graph. Pruned tokens are
removed physically: on a CPU an encoder block's latency is nearly linear in tokens (docs/platform-facts.md), so
removing them converts almost 1:1 into time, while masking saves nothing.
"""

from __future__ import annotations

import math

import numpy as np


def keep_count(original_tokens: int, current_tokens: int, keep_fraction: float, protected: int) -> int:
    """How many tokens stay: a fraction of the *original* length, never fewer than the protected
    tokens plus one, never more than are there now."""
    wanted = math.ceil(keep_fraction * original_tokens)
    return max(min(wanted, current_tokens), min(protected + 1, current_tokens))


def keep_tokens(importance: np.ndarray, protected: np.ndarray, keep: int) -> np.ndarray:
    """Indices (in original order) of the `keep` most important tokens, protected tokens first.

    importance: [T] float; protected: [T] bool (special tokens such as [CLS] and [SEP]).
    """
    if keep >= len(importance):
        return np.arange(len(importance))
    score = np.where(protected, np.inf, importance)
    chosen = np.argpartition(-score, keep - 1)[:keep]
    return np.sort(chosen)
