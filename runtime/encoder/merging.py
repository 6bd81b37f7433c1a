"""Token merging between blocks: bipartite soft matching (ToMe, arXiv 2210.09461).

Tokens are split alternately into two sets; each token of the first set finds its most similar
token of the second (cosine of hidden states: ToMe uses the attention keys, which the block graphs
do not output, and hidden states rank pairs much alike), and the `r` best-matched pairs are
averaged into one token, weighted by how many original tokens each already stands for. The merged
size is carried as `log(size)` in `attention_bias`, so attention stays proportional (ToMe's
proportional attention) and mean pooling weights it by its size. Unlike pruning, nothing is
dropped: a merged token keeps what its parts said. Special tokens are never merged.
"""

from __future__ import annotations

import numpy as np


def merge_tokens(hidden: np.ndarray, bias: np.ndarray, protected: np.ndarray,
                 keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hidden [T, H], bias [T] (log sizes), protected [T] -> the same with at most T - keep merges
    done (fewer when there are not enough unprotected tokens to pair)."""
    free = np.flatnonzero(~protected)
    sources, targets = free[::2], free[1::2]
    merges = min(len(bias) - keep, len(sources), len(targets) * len(sources))
    if merges <= 0 or len(targets) == 0:
        return hidden, bias, protected
    unit = hidden / np.maximum(np.linalg.norm(hidden, axis=-1, keepdims=True), 1e-12)
    similarity = unit[sources] @ unit[targets].T
    best_target = similarity.argmax(1)
    chosen = np.argsort(-similarity.max(1), kind="stable")[:merges]
    size = np.exp(bias.astype(np.float64))
    weighted = hidden.astype(np.float64) * size[:, None]
    into = targets[best_target[chosen]]
    merged_from = sources[chosen]
    np.add.at(weighted, into, weighted[merged_from])
    np.add.at(size, into, size[merged_from])
    stays = np.ones(len(bias), dtype=bool)
    stays[merged_from] = False
    return ((weighted[stays] / size[stays, None]).astype(hidden.dtype), np.log(size[stays]).astype(bias.dtype),
            protected[stays])
