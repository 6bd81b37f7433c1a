"""The fp32 head's greedy choice at the cost of a lowered head.

A greedy fp32 step only needs the argmax of the fp32 logits. The package's 8-bit head gives every
logit within a bound known per row (quant/head_screen.py): the row's rounding error times the
state's norm, plus the row's norm times the activation rounding of the int8 compute. Every row whose
logit plus bound falls below the best lower bound cannot be the argmax; the rest (a median of 12
rows of SmolLM2's 49,152 on its validation prompts, 661 at most) get their exact fp32 logits from
the fp32 weight's rows, mapped from the package (for SmolLM2 the embedding table, which the head
ties). The choice is the fp32 head's, and the step reads ~32 MB instead of 113. The other logits
stay the lowered ones, so a log-probability taken from them is the fp32 one to within their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import PackageError
from ..package import Package

# room for the float rounding of both heads' sums (relative to the bound, and absolute)
_SLACK, _FLOOR = 1.01, 1e-4


@dataclass(frozen=True)
class ScreenedHead:
    """A package's head screen (manifest.HeadScreen) as read: its row norms and the fp32 rows."""
    precision: str  # the lowered head that screens
    error_norms: np.ndarray  # [vocab] ||W_v - Q(W)_v||
    weight_norms: np.ndarray  # [vocab] ||Q(W)_v||
    block_size: int  # the activation block of its int8 compute
    weight: np.ndarray  # [vocab, hidden] the fp32 head's rows, mapped from the package


def read_head_screen(package: Package, weight: np.ndarray) -> ScreenedHead:
    """The manifest's decoder.head_screen, with `weight` the fp32 rows it names, mapped."""
    facts = package.manifest.decoder
    screen = facts.head_screen
    data = np.fromfile(package.path(screen.path), np.float32)
    if data.size != 2 * facts.vocab_size or not np.isfinite(data).all() or (data < 0).any():
        raise PackageError(f"{screen.path} must hold 2 x {facts.vocab_size} finite, non-negative row norms; "
                           f"re-export the package")
    errors, norms = data.reshape(2, facts.vocab_size)
    return ScreenedHead(screen.precision, errors, norms, screen.block_size, weight)


def screened_logits(screen: ScreenedHead, lowered: np.ndarray, normed: np.ndarray,
                    ruled_out: tuple[int, ...] = ()) -> np.ndarray:
    """lowered [rows, vocab] logits and normed [rows, hidden] states -> logits whose argmax is the
    fp32 head's, the tokens in `ruled_out` (end of sequence before min_new_tokens) at -inf."""
    logits = np.array(lowered, np.float32)
    rows, hidden = normed.shape
    block = screen.block_size
    padded = np.zeros((rows, -(-hidden // block) * block), np.float32)
    padded[:, :hidden] = np.abs(normed)
    # int8 activations: each block's step is its largest magnitude / 127, each value off by half a step
    steps = padded.reshape(rows, -1, block).max(axis=2) / 127.0
    rounding = np.sqrt(block * np.square(steps / 2).sum(axis=1))
    for r in range(rows):
        row = logits[r]
        bound = screen.error_norms * np.float32(np.linalg.norm(normed[r]) * _SLACK)
        bound += screen.weight_norms * np.float32(rounding[r] * _SLACK)
        bound += _FLOOR * (1.0 + np.abs(row))
        row[list(ruled_out)] = -np.inf  # never a candidate: -inf plus a finite bound
        candidates = np.flatnonzero(row + bound >= np.max(row - bound))
        row[candidates] = np.asarray(screen.weight[candidates], np.float32) @ normed[r]
    return logits
