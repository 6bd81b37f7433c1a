"""One generate() call: its KV cache, text stream and clock, and the three decoding loops.

`full` runs every block for every token. `speculative` drafts (drafts.py) and checks all drafts with
the full model in one pass, keeping the agreeing prefix plus the full model's own next token.
`early-exit` answers a token from the first exit whose top-2 margin passes its threshold (CALM) and
fills the skipped blocks' cache entries with their key/value projections of the exit's state.
A Decoding is private to its call, so threads never share one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import numpy as np
from tokenizers import Tokenizer

from .drafts import Draft, context_proposal
from .kv_cache import KVCache
from ..pruning import keep_count, keep_tokens
from ..result import Generation, GenerationTrace
from .sampling import Sampling, choose_token, token_log_probability, top2_margin, top_probability

if TYPE_CHECKING:
    from .generation import DecoderSession


class _Stream:
    """Decoded text so far, cut at a stop string, with the new part handed to a callback."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...], on_text: Callable[[str], None] | None):
        self.tokenizer, self.stop, self.on_text = tokenizer, stop, on_text
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop:
            at = text.find(stop)
            if at >= 0:
                text, self.stopped = text[:at], True
        self.text = text
        # hold back a partial character and anything that could still become a stop string
        ready = len(text) if self.stopped else len(text.rstrip("\ufffd"))
        if not self.stopped:
            for stop in self.stop:
                for cut in range(min(len(stop) - 1, ready), 0, -1):
                    if text[:ready].endswith(stop[:cut]):
                        ready -= cut
                        break
        if self.on_text is not None and ready > self.sent:
            self.on_text(text[self.sent:ready])
            self.sent = ready


def prompt_tokens_kept(importance: np.ndarray, fraction: float, prompt_tokens: int,
                       sinks: int = 4, recent: int = 16) -> np.ndarray:
    """Indices of the prompt tokens that go on to the next blocks: the first `sinks` (attention sinks,
    StreamingLLM) and last `recent` always, the others by the attention they received, up to
    `fraction` of the prompt."""
    current = len(importance)
    protected = np.zeros(current, dtype=bool)
    protected[:sinks] = True
    protected[max(0, current - recent):] = True
    keep = keep_count(prompt_tokens, current, fraction, int(protected.sum()))
    return keep_tokens(importance, protected, keep)


class Decoding:
    """One generate() call: its cache, stream and clock (never shared between threads)."""

    def __init__(self, session: DecoderSession, ids: list[int], max_new: int, sampling: Sampling,
                 stop: tuple[str, ...], on_text, budget_ms: float | None, min_new: int = 0, precision: str = "fp32",
                 prune_prompt: tuple[tuple[int, float], ...] = ()):
        self.s, self.prompt, self.max_new, self.sampling = session, ids, max_new, sampling
        self.precision, self.prune_prompt = precision, prune_prompt
        self.min_new = min_new
        # a greedy fp32 choice at full depth can go through the lowered head's screen (head_screen.py)
        self.screens = sampling.greedy and precision == "fp32" and session.screens_head
        self.rng = np.random.default_rng(sampling.seed)
        # preallocated for the whole call unless a pruned prompt leaves deeper blocks fewer entries
        self.cache = KVCache(session.num_blocks, 0 if prune_prompt else len(ids) + max_new)
        self.stream = _Stream(session.tokenizer, stop, on_text)
        self.budget_ms = budget_ms
        self.log_probs: list[float] = []
        self.exit_blocks: list[int] = []
        self.drafted = self.accepted = 0
        self.kv_peak = 0
        self.started = time.perf_counter()
        self.prefill_ms = self.first_ms = 0.0
        self.stopped = "length"

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def forward(self, tokens: list[int], start: int = 0, stop: int | None = None, cache: KVCache | None = None,
                precision: str = "fp32", prune: tuple[tuple[int, float], ...] = ()) -> np.ndarray:
        """Embed `tokens` (new, after the cache) and run blocks start..stop-1; returns the hidden
        states of the tokens that went through (all, unless `prune` dropped some after a block)."""
        cache = cache or self.cache
        stop = self.s.num_blocks if stop is None else stop
        chunk = self.s.prefill_chunk
        if not prune and len(tokens) > chunk:  # a long prompt in pieces: bounded activations
            for at in range(0, len(tokens) - chunk, chunk):
                self.forward(tokens[at:at + chunk], start, stop, cache, precision)
            tokens = tokens[len(tokens) - (len(tokens) - 1) % chunk - 1:]
        positions = np.arange(len(tokens)) + cache.next_position()
        hidden = self.s.embed(np.array([tokens], np.int64), precision)
        at = start
        for point, fraction in prune:
            if not at < point < stop:
                continue
            hidden, received = self.s.blocks(cache, hidden, positions, at, point, precision, attention=True)
            kept = prompt_tokens_kept(received[0, -hidden.shape[1]:], fraction, len(tokens))
            hidden, positions, at = hidden[:, kept], positions[kept], point
        hidden, _ = self.s.blocks(cache, hidden, positions, at, stop, precision)
        self.kv_peak = max(self.kv_peak, self.cache.nbytes() + (cache.nbytes() if cache is not self.cache else 0))
        return hidden

    def allowed(self, logits: np.ndarray, ahead: int = 0) -> np.ndarray:
        """The logits with end-of-sequence ruled out while fewer than min_new tokens exist (`ahead`
        counts tokens already chosen but not yet emitted, as in a speculative verdict)."""
        if len(self.stream.ids) + ahead >= self.min_new:
            return logits
        masked = logits.copy()
        masked[list(self.s.facts.eos_ids)] = -np.inf
        return masked

    def emit(self, token: int, logits: np.ndarray) -> bool:
        """Take one new token; True when generation must stop."""
        self.log_probs.append(token_log_probability(logits, token))
        self.stream.add(token)
        if not self.first_ms:
            self.first_ms = self.elapsed_ms()
        if token in self.s.facts.eos_ids:
            self.stopped = "eos"
        elif self.stream.stopped:
            self.stopped = "stop"
        elif len(self.stream.ids) >= self.max_new:
            self.stopped = "length"
        elif self.budget_ms is not None and self.elapsed_ms() > self.budget_ms:
            self.stopped = "deadline"
        else:
            return False
        return True

    def run(self, mode: str, draft: "Draft | None", draft_tokens: int,
            exit_thresholds: tuple[float | None, ...] | None) -> Generation:
        hidden = self.forward(self.prompt, precision=self.precision, prune=self.prune_prompt)
        self.prefill_ms = self.elapsed_ms()
        logits = self._next_logits(hidden[:, -1:])
        if mode == "speculative":
            self._speculative(logits, draft, draft_tokens)
        else:
            self._one_by_one(logits, exit_thresholds if mode == "early-exit" else None)
        trace = GenerationTrace(
            mode=mode, prompt_tokens=len(self.prompt), new_tokens=len(self.stream.ids),
            prefill_ms=self.prefill_ms, first_token_ms=self.first_ms, total_ms=self.elapsed_ms(),
            stopped=self.stopped, kv_bytes=self.kv_peak, drafted=self.drafted, accepted=self.accepted,
            exit_blocks=tuple(self.exit_blocks))
        return Generation(self.stream.text, tuple(self.stream.ids), tuple(self.log_probs), trace)

    def _one_by_one(self, logits: np.ndarray, exit_thresholds: tuple[float | None, ...] | None) -> None:
        while True:
            logits = self.allowed(logits)
            token = choose_token(logits, self.sampling, self.rng)
            if self.emit(token, logits):
                return
            if exit_thresholds is None:
                logits = self._next_logits(self.forward([token], precision=self.precision))
            else:
                logits = self._early_exit_step(token, exit_thresholds)

    def _next_logits(self, hidden: np.ndarray) -> np.ndarray:
        """The next token's logits after a full-depth pass (the last row of `hidden`)."""
        if self.screens:
            ruled_out = self.s.facts.eos_ids if len(self.stream.ids) < self.min_new else ()
            return self.s.greedy_logits(hidden[:, -1:], ruled_out)[-1]
        return self.s.head(hidden[:, -1:], self.precision)[0, -1]

    def _early_exit_step(self, token: int, thresholds: tuple[float | None, ...]) -> np.ndarray:
        s = self.s
        positions = np.arange(1) + self.cache.next_position()
        hidden = s.embed(np.array([[token]], np.int64), self.precision)
        done = 0
        tested = [(e, t) for e, t in zip(s.exits, thresholds) if t is not None]
        for depth, threshold in (*tested, (s.num_blocks, None)):
            hidden, _ = s.blocks(self.cache, hidden, positions, done, depth, self.precision)
            done = depth
            logits = s.head(hidden, self.precision)[0, -1]
            if threshold is not None and top2_margin(logits) >= threshold:
                s.fill_key_values(self.cache, hidden, positions, depth, self.precision)
                break
        self.kv_peak = max(self.kv_peak, self.cache.nbytes())
        self.exit_blocks.append(done)
        return logits

    def _speculative(self, logits: np.ndarray, draft: "Draft", draft_tokens: int) -> None:
        """Draft, verify all drafts in one full-depth pass, keep the agreeing prefix plus the full
        model's own next token: the output is greedy full-depth decoding, token for token (at a
        lowered precision, which drafts from the context only, up to its kernels' rounding).

        Every draft works in the call's one cache. A shallow fp32 draft's entries are the full
        model's own, so the check runs only the deeper blocks. A lowered draft's entries are not:
        the check rolls them back and writes full-precision ones for the same positions, while the
        draft reads full-precision entries for everything before (no prefill of its own, no second
        cache, and drafts closer to the full model)."""
        s = self.s
        logits = self.allowed(logits)
        token = choose_token(logits, self.sampling, self.rng)
        if self.emit(token, logits):
            return
        shares_cache = draft.shares_cache(s.num_blocks)
        while True:
            base = self.cache.next_position()  # the position of `token`
            room = self.max_new - len(self.stream.ids)
            inputs, drafts, early = [token], [], []
            drafted_all = True  # False: drafting stopped at an unlikely token, the last input already ran
            copied = context_proposal([*self.prompt, *self.stream.ids], draft.ngram, min(draft_tokens, room),
                                      draft.shortest_match(self.precision)) \
                if draft.ngram else []
            for _ in range(0 if copied or not draft.blocks else min(draft_tokens, room)):
                hidden = self.forward([inputs[-1]], 0, draft.blocks, precision=draft.precision)
                if shares_cache:
                    early.append(hidden)
                scores = self.allowed(s.head(hidden, draft.precision)[0, -1], len(drafts))
                if draft.confidence and drafts and top_probability(scores) < draft.confidence:
                    drafted_all = False  # the check decides this position
                    break
                drafts.append(int(np.argmax(scores)))
                inputs.append(drafts[-1])
            if shares_cache and not copied:  # the deep blocks continue from the draft's own states and entries
                if drafted_all:
                    early.append(self.forward([inputs[-1]], 0, draft.blocks))
                positions = np.arange(base, base + len(inputs))
                deep, _ = s.blocks(self.cache, np.concatenate(early, axis=1), positions, draft.blocks, s.num_blocks)
            else:  # drafted from the context (nothing ran yet) or by a lowered draft (its entries go)
                if copied:
                    drafts, inputs = copied, [token, *copied]
                self.cache.roll_back(base)
                deep = self.forward(inputs, precision=self.precision)
            verdict = np.stack([self.allowed(row, i) for i, row in enumerate(s.head(deep, self.precision)[0])])
            self.drafted += len(drafts)
            kept = 0
            while kept < len(drafts) and int(np.argmax(verdict[kept])) == drafts[kept]:
                kept += 1
            self.accepted += kept
            self.cache.roll_back(base + kept + 1)
            for i in range(kept + 1):
                token = drafts[i] if i < kept else int(np.argmax(verdict[i]))
                if self.emit(token, verdict[i]):
                    return
