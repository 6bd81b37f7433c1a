"""Per-token exit thresholds for a decoder, CALM style: how often the shared head at an exit picks the
full model's next token, and how confident it is when it does.

On calibration prompts the full model writes its greedy continuation; one teacher-forced pass then
gives, at every generated position, each exit's top-2 probability margin and whether its argmax is
the full model's token. Thresholds per agreement level come from the same fixed-sequence procedure
as the encoder's exits (thresholds.py: one margin threshold for every exit, disagreements counted
over all tokens). Positions within one prompt are not independent, so the level is a target there
rather than a guarantee. Teacher forcing leaves out one effect of exiting: a
token that exits writes deeper cache entries from its shallower state; the benchmark measures the
agreement of real early-exit generation.
"""

from __future__ import annotations

import numpy as np

from ...manifest import ExitThresholds
from ...progress import progress_bar
from ...runtime.decoder.generation import DecoderSession
from ...runtime.decoder.kv_cache import KVCache
from ...runtime.decoder.sampling import top2_margin
from ..thresholds import calibrate_level

DECODER_LEVELS = (0.9, 0.95, 0.99)


def exit_statistics(session: DecoderSession, prompts: list[str], new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """[positions, exits] margins and agreement with the full model's greedy token."""
    margins, agrees = [], []
    exits = session.exits
    with progress_bar(len(prompts), "calibrating exits") as bar:
        for prompt in prompts:
            ids = session.encode(prompt)
            continuation = list(session.generate(ids, max_new_tokens=new_tokens).token_ids)
            sequence = ids + continuation
            cache, done = KVCache(session.num_blocks), 0
            hidden = session.embed(np.array([sequence], np.int64))
            per_exit = []
            for depth in (*exits, session.num_blocks):
                hidden, _ = session.blocks(cache, hidden, np.arange(len(sequence)), done, depth)
                done = depth
                per_exit.append(session.head(hidden[:, len(ids) - 1:-1])[0])
            final = per_exit[-1].argmax(-1)
            margins.append(np.array([[top2_margin(row) for row in logits] for logits in per_exit[:-1]]).T)
            agrees.append(np.array([logits.argmax(-1) == final for logits in per_exit[:-1]]).T)
            bar.update()
    return np.concatenate(margins), np.concatenate(agrees)


def calibrate_decoder_exits(session: DecoderSession, prompts: list[str], new_tokens: int = 32
                            ) -> tuple[tuple[ExitThresholds, ...], dict]:
    if not session.exits or not prompts:
        return (), {}
    margins, agrees = exit_statistics(session, prompts, new_tokens)
    levels = tuple(calibrate_level(margins, agrees, list(session.exits), session.num_blocks, level)
                   for level in DECODER_LEVELS)
    record = {"prompts": len(prompts), "positions": int(len(margins)), "new_tokens": new_tokens,
              "exit_agreement_with_final": {str(e): round(float(a), 4) for e, a in zip(session.exits, agrees.mean(0))}}
    return levels, record
