"""Token pruning inside the fine-tuning loop, so the exported model answers well from pruned states.

Training-free top-k pruning cost the AG News MiniLM 1.0-1.2 pt as soon as 10% of the tokens went
after block 1 (bench/RESULTS-archive.md): the blocks after a pruning point had never seen a pruned
sequence. PoWER-BERT (arXiv 2001.08950) and LTP (arXiv 2107.00910) fine-tune with the pruning in
the forward pass. Here that pruning is the runtime's own (runtime/pruning.py): the same score, a
fraction of the *original* length, special tokens always kept, order kept. It runs per example on
a padded batch: each row keeps its own count, and the rows that keep fewer are padded back with
PAD_BIAS, which every block already treats as absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ExportError
from ..manifest import PAD_BIAS, VALID_BIAS_FLOOR


@dataclass(frozen=True)
class PruningFamily:
    """The keep schedules fine-tuning prunes with: geometric fractions r, r^2, ... of the original
    tokens after blocks f, f+1, ... (DynamicViT's rho^b), f drawn from `first_blocks` and r uniform
    in `ratio_range`, in `share` of the steps (the rest keep full depth sharp).

    The default family is broad, so one fine-tune serves any schedule of it. A narrow one pays
    where the runtime will prune hard: on AG News, training only on r in [0.45, 0.7] from block 1
    cut the held-out loss at r = 0.6 (41% of the token work) from 1.67 to 0.47 pt (bench/RESULTS-archive.md)."""

    first_blocks: tuple[int, ...] = (1, 2)
    ratio_range: tuple[float, float] = (0.4, 0.9)
    share: float = 0.75

    def check(self, num_blocks: int) -> None:
        low, high = self.ratio_range
        if not 0.0 < low <= high <= 1.0:
            raise ExportError(f"--train-pruning-ratios {low},{high}: give LOW,HIGH with 0 < LOW <= HIGH <= 1")
        bad = [b for b in self.first_blocks if not 1 <= b < num_blocks]
        if bad or not self.first_blocks:
            raise ExportError(f"--train-pruning-after {bad or 'nothing'}: this model has {num_blocks} blocks, "
                              f"so pruning starts after blocks 1..{num_blocks - 1}")
        if not 0.0 < self.share <= 1.0:
            raise ExportError(f"--train-pruning-share {self.share}: give a share of the steps in (0, 1]")

    def describe(self) -> str:
        return (f"keep r^(b-f+1) of the original tokens after each block b >= f, f in {self.first_blocks}, "
                f"r uniform in {self.ratio_range}")


def sample_keep_schedule(generator: torch.Generator, num_blocks: int, family: PruningFamily) -> dict[int, float]:
    """One geometric schedule {after_block: fraction kept} of the family."""
    first = family.first_blocks[int(torch.randint(len(family.first_blocks), (1,), generator=generator))]
    low, high = family.ratio_range
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
