"""The online audit for a decoder's early exits: a share of greedy generations is scored again at
full depth, after it is returned, token by token.

A decoder's exit thresholds state a token agreement with full depth, calibrated on prompts like the
calibration set (export/decoder/exit_calibration.py). The audit re-reads an audited generation with
the full model in one teacher-forced pass (`sequence_logits` over prompt + answer): each new token
counts as a sample, and a disagreement when the full model, given the same context, would have
chosen another. The test and its state are the encoders' (runtime/audit.py); tokens of one answer
are not independent, so the audit reads the level more slowly than a stream of separate requests,
never more loosely. When the level is not held, later generations at that level use the next
stricter stored level, or full depth when there is none.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError
from ...targets.fingerprint import device_fingerprint, fingerprint_key
from ...targets.profile import package_id
from ..audit import AuditState, Auditor, read_state, state_path

if TYPE_CHECKING:
    from .generation import DecoderSession


def start_decoder_audit(session: "DecoderSession", agreement: float, share: float,
                        seed: int | None = None) -> Auditor:
    levels = tuple(t.agreement for t in session.manifest.exit_thresholds)
    if agreement not in levels:
        known = ", ".join(f"{level:g}" for level in levels) or "none"
        raise InputError(f"the audit checks a stored level; this package has exit thresholds for {known}")
    device = fingerprint_key(device_fingerprint(session.runner.intra_op_threads, session.runner.providers[0]))
    path = state_path(package_id(session.package.root), device)
    state = read_state(path, agreement, levels) or AuditState(requested=agreement, in_force=agreement)
    if state.in_force != agreement:
        warnings.warn(f"an earlier audit found token agreement {agreement:g} not held on this device: early exit "
                      f"runs at {_named(state.in_force)} (`edgeinfer audit` shows why)", UserWarning, stacklevel=3)
    return Auditor(share, state, path, lambda sequence: session.sequence_logits(list(sequence)).argmax(-1),
                   _tally, lambda current: _tighten(levels, current), seed)


def audited_sequence(prompt: list[int], new_tokens: tuple[int, ...]) -> tuple[int, ...]:
    """What the full model reads: the prompt and every new token but the last (it predicts each)."""
    return (*prompt, *new_tokens[:-1])


def _tally(answer: tuple[int, tuple[int, ...]], full_choices: np.ndarray) -> tuple[int, int]:
    """answer: (prompt length, new tokens); full_choices: the full model's argmax at every position."""
    prompt_length, new_tokens = answer
    chosen = np.asarray(full_choices[prompt_length - 1: prompt_length - 1 + len(new_tokens)])
    return len(new_tokens), int((chosen != np.asarray(new_tokens)).sum())


def _tighten(levels: tuple[float, ...], current: float | None) -> float | None:
    stricter = sorted(level for level in levels if current is not None and level > current)
    chosen = stricter[0] if stricter else None
    warnings.warn(f"the audit found token agreement {current:g} is not held on this traffic: early exit now runs "
                  f"at {_named(chosen)} (trace.level_used)", UserWarning, stacklevel=2)
    return chosen


def _named(level: float | None) -> str:
    return f"level {level:g}" if level is not None else "full depth (exits off)"
