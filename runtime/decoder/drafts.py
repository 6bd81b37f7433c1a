"""Where speculative decoding's drafts come from.

A draft only has to be cheap and often right: the full model checks every drafted token in one pass
and keeps the agreeing prefix, so the output is full-depth greedy decoding whatever drafted it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Draft:
    """What drafts tokens for speculative decoding: the first `blocks` blocks at `precision` and the
    shared head. At fp32 with fewer blocks than the model, the draft's cache entries are the full
    model's own (LayerSkip) and the check runs only the remaining blocks; a lowered draft (q8)
    writes provisional entries that the check replaces, running every block on the drafted tokens."""

    blocks: int  # 0: no model draft (context proposals only)
    precision: str = "fp32"
    confidence: float = 0.0  # stop drafting at a token less likely than this under the draft
    ngram: int = 0  # first look for the context's last n..1 tokens earlier in the context, and propose what followed

    def shortest_match(self, check_precision: str) -> int:
        """The shortest context match worth a check by a model at `check_precision`. On SmolLM2 summaries, proposals after a one-token
        match were accepted 20% of the time (1.8 tokens a check), after two and three tokens 41% and
        57% (2.6 and 3.2). A one-token match loses beside a model draft (q8 drafts: 96%, 4.8 tokens a
        check and four draft steps, 13 ms a token against 14), and when a lowered variant checks
        (context drafts only): its check grows ~2.6 ms a token against fp32's ~1.2, so 1.8 tokens
        cost more than two plain q8 steps (bench/RESULTS-archive.md, 2026-12-06: SmolLM2)."""
        return 2 if self.blocks or check_precision != "fp32" else 1

    def shares_cache(self, num_blocks: int) -> bool:
        return self.precision == "fp32" and 0 < self.blocks < num_blocks


def context_proposal(context: list[int], longest: int, count: int, shortest: int = 1) -> list[int]:
    """Prompt lookup (the n-gram drafting of Lookahead decoding, with the context as the pool): the
    tokens that followed the latest earlier occurrence of the context's last n tokens, longest n first,
    n down to `shortest`. Free to compute, and right often where answers copy from the prompt
    (summaries, edits, quotes)."""
    for n in range(min(longest, len(context) - 1), shortest - 1, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start:start + n] == tail:
                return context[start + n:start + n + count]
    return []
