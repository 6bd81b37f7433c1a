"""Token pruning inside the fine-tuning loop, so the exported model answers well from pruned states.

Training-free top-k pruning cost the AG News MiniLM 1.0-1.2 pt as soon as 10% of the tokens went
after block 1 (bench/RESULTS.md): the blocks after a pruning point had never seen a pruned
sequence. PoWER-BERT (arXiv 2001.08950) and LTP (arXiv 2107.00910) fine-tune with the pruning in
the forward pass. Here that pruning is the runtime's own (runtime/pruning.py): the same score, a
fraction of the *original* length, special tokens always kept, order kept. It runs per example on
a padded batch: each row keeps its own count, and the rows that keep fewer are padded back with
PAD_BIAS, which every block already treats as absent.
"""

from __future__ import annotations

import math

import torch

from ..manifest import PAD_BIAS, VALID_BIAS_FLOOR

# Schedules trained on: geometric keep fractions r, r^2, ... of the original tokens after blocks
# `first`, first+1, ... (DynamicViT's rho^b), r drawn uniformly, so one fine-tune serves every
# schedule of the family the runtime may be asked for instead of the one it was trained at.
FIRST_BLOCKS = (1, 2)
RATIO_RANGE = (0.4, 0.9)


def sample_keep_schedule(generator: torch.Generator, num_blocks: int) -> dict[int, float]:
    """One geometric schedule {after_block: fraction kept} of the family above."""
    first = FIRST_BLOCKS[int(torch.randint(len(FIRST_BLOCKS), (1,), generator=generator))]
    low, high = RATIO_RANGE
    ratio = low + (high - low) * float(torch.rand((), generator=generator))
    return {block: ratio ** (block - first + 1) for block in range(first, num_blocks)}


def keep_counts(original_tokens: torch.Tensor, current_tokens: torch.Tensor, fraction: float,
                protected: torch.Tensor) -> torch.Tensor:
    """runtime/pruning.keep_count per row: ceil(fraction * original), at least the protected
    tokens plus one, at most what is there."""
    wanted = torch.ceil(fraction * original_tokens.to(torch.float64)).to(torch.long)
    floor = torch.minimum(protected + 1, current_tokens)
    return torch.maximum(torch.minimum(wanted, current_tokens), floor)


def prune_padded(hidden: torch.Tensor, bias: torch.Tensor, protected: torch.Tensor, importance: torch.Tensor,
                 original_tokens: torch.Tensor, fraction: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each row's most important tokens (protected first), in their original order.

    hidden [B, T, H]; bias [B, T] (PAD_BIAS for absent tokens); protected [B, T] bool;
    importance [B, T]; original_tokens [B]: the row's token count before any pruning.
    Returns hidden, bias and protected cut to the longest row's count.
    """
    valid = bias > VALID_BIAS_FLOOR
    keep = keep_counts(original_tokens, valid.sum(1), fraction, (protected & valid).sum(1))
    score = importance.masked_fill(protected, math.inf).masked_fill(~valid, -math.inf)
    ranked = score.argsort(dim=1, descending=True, stable=True)[:, :int(keep.max())]
    kept = torch.arange(ranked.shape[1]).unsqueeze(0) < keep.unsqueeze(1)
    # back to the original order, the rows' unkept slots last
    order = torch.where(kept, ranked, ranked + hidden.shape[1]).argsort(dim=1)
    index, kept = ranked.gather(1, order), kept.gather(1, order)
    hidden = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    bias = torch.where(kept, bias.gather(1, index), torch.tensor(PAD_BIAS, dtype=bias.dtype))
    return hidden, bias, protected.gather(1, index) & kept
