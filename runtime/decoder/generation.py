"""A decoder package that generates text: prefill, then one token per step over a KV cache.

DecoderSession adds to the package's graphs (graphs.py) the tokenizer, and checks a request against
the model's positions and the KV-cache cap; each generate() call then runs in its own Decoding
(decoding.py): full depth, speculative (drafts.py) or early exit, with a sequence-confidence restart
at fp32 when a lowered variant's answer is unsure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from ...errors import BudgetError, InputError
from ...manifest import exact_level
from ..arguments import real
from ..package import Package
from ..result import Generation
from ..tokenize import package_tokenizer
from .audit import audited_sequence, start_decoder_audit
from .decoding import Decoding
from .drafts import Draft
from .generation_budget import device_costs, plan_generation
from .graphs import DecoderGraphs
from .kv_cache import MIN_PRUNED_FRACTION, kv_need_mb
from .requests import check_request
from .sampling import Sampling

if TYPE_CHECKING:
    from ..audit import Auditor

DECODE_MODES = ("full", "speculative", "early-exit")


class DecoderSession(DecoderGraphs):
    """Opened by `edgeinfer.load` for text-generation packages: text in, text out."""

    def __init__(self, package: Package, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), memory_mb: float | None = None,
                 fused: bool = True):
        super().__init__(package, threads, providers, fused)
        self.memory_mb = memory_mb
        # prompts longer than this are prefilled in pieces (not when pruning, which ranks the whole
        # prompt): attention scores grow with new x cached tokens, and a 1,363-token SmolLM2 prompt in
        # one piece raised peak RSS by ~280 MB over a short one (bench/studies/decoder_memory.py)
        self.prefill_chunk = 256
        self.tokenizer = package_tokenizer(package)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._auditors: dict[float, "Auditor"] = {}  # per requested level (runtime/decoder/audit.py)

    # --- text -------------------------------------------------------------------------------

    def encode(self, prompt: str, chat: bool = True) -> list[int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty; pass some text")
        text = f"{self.facts.prompt_prefix}{prompt}{self.facts.prompt_suffix}" if chat else prompt
        ids = self.tokenizer.encode(text, add_special_tokens=not chat).ids
        if not ids:
            raise InputError("the prompt encodes to no tokens")
        return ids

    def fit_memory(self, prompt_tokens: int, new_tokens: int, prune: tuple[tuple[int, float], ...],
                   prune_to_fit: bool) -> tuple[tuple[int, float], ...]:
        """The KV cap: the call's one cache at its largest must fit (drafts write into it too). With
        prune_to_fit, a prompt that does not is pruned after the first exit just enough to fit (never
        below a tenth); otherwise, or when even that does not fit, the refusal names the cap that would."""
        if self.memory_mb is None:
            return prune
        per_block = self.facts.kv_bytes_per_token / self.num_blocks / 2**20  # MB per token per block
        total = prompt_tokens + new_tokens
        need = kv_need_mb(self.num_blocks, per_block, prompt_tokens, new_tokens, prune)
        if need <= self.memory_mb:
            return prune
        cut = self.exits[0] if self.exits else self.num_blocks // 4
        deeper = self.num_blocks - cut
        room = self.memory_mb / per_block
        fraction = (room - cut * total - deeper * new_tokens) / (deeper * prompt_tokens)
        floor = max(MIN_PRUNED_FRACTION, 20 / prompt_tokens)
        if prune_to_fit and not prune and floor <= fraction < 1 and cut >= 1:
            return ((cut, float(np.floor(fraction * 1000) / 1000)),)
        least = kv_need_mb(self.num_blocks, per_block, prompt_tokens, new_tokens, ((cut, floor),)) \
            if prune_to_fit else need
        fits = int(self.memory_mb / (per_block * self.num_blocks))
        raise BudgetError(f"{total} tokens need {need:.1f} MB of KV cache, over the {self.memory_mb:g} MB cap; "
                          f"raise the cap to {least:.1f} MB or keep prompt + new tokens under {fits}")

    # --- generation -------------------------------------------------------------------------

    def generate(self, prompt: str | list[int], max_new_tokens: int = 64, sampling: Sampling = Sampling(),
                 stop: tuple[str, ...] = (), on_text: Callable[[str], None] | None = None, chat: bool = True,
                 mode: str = "full", draft_blocks: int | None = None, draft_tokens: int = 4,
                 draft_precision: str | None = None, draft_confidence: float = 0.0, draft_ngram: int = 3,
                 precision: str = "fp32",
                 restart_below: float | None = None, prune_prompt: tuple[tuple[int, float], ...] = (),
                 prune_to_fit: bool = False,
                 exit_threshold: float | None = None, agreement: float | None = None, budget_ms: float | None = None,
                 min_new_tokens: int = 0, first_token_ms: float | None = None,
                 tokens_per_second: float | None = None, audit: float | None = None) -> Generation:
        """prompt: text (wrapped in the chat template unless chat=False) or token ids as they are.

        mode "speculative" drafts `draft_tokens` tokens with the first `draft_blocks` blocks (an exit
        position; the middle one by default) at `draft_precision` (a lowered variant drafts with all
        blocks by default; unset: the package's lowered variant closest to fp32 when it has one and
        draft_blocks is unset, else fp32) and is exact for greedy decoding; a round's drafting stops
        early at a token whose draft probability is below `draft_confidence` (it would likely be
        rejected, and the check supplies that position anyway); with `draft_ngram` > 0 (3 unless set)
        a round first proposes what followed the context's last n tokens earlier in the context (prompt
        lookup), and `draft_blocks=0` drafts from the context alone; "early-exit" answers
        tokens at the first exit whose top-2 margin reaches its threshold: those the package calibrated
        for token agreement `agreement` with full depth (exit_calibration.py), or `exit_threshold` at
        every exit.
        budget_ms: stop generating (stopped="deadline") once this much time has passed.
        min_new_tokens: end-of-sequence tokens are not chosen before this many (as transformers does).
        first_token_ms, tokens_per_second: budgets that choose the precision and the prompt pruning
        (generation_budget.py) from this package's costs measured on this device (measured on first
        use, ~30 s, then cached); refused with one line when no setting meets them.
        precision: the variant every graph runs at in "full" and "early-exit" modes (`q8`: the
        weight-only 8-bit variant, quant/decoder_variant.py). Speculative decoding checks at `precision`
        too: at fp32 with any draft, at a lowered variant with drafts from the context only (the check
        costs two lowered steps or more, so only free drafts pay). Its output is then the variant's
        greedy output up to the int8 kernel's rounding, which differs between one token and several
        at a time (SmolLM2 q8: logits up to 0.8 apart), so its token agreement with fp32 is measured
        as the variant's is, not assumed.
        restart_below: sequence-level confidence restart for a lowered `precision`: when the finished
        answer's lowest token log-probability is below this, answer again at fp32 (greedy: by
        speculative decoding with this precision as the draft) if `budget_ms` leaves at least the
        first attempt's time. Only the final attempt is streamed to `on_text`.
        audit: with mode "early-exit", greedy decoding and an `agreement` level, this share of
        generations is scored again at full depth after it is returned (runtime/decoder/audit.py); when
        the level is not held on this traffic, later generations run at the next stricter level.
        prune_prompt: ((after_block, fraction), ...): during the prefill, after that block keep only that
        fraction of the prompt's tokens (by the attention they received; the first 4 and last 16 always)
        for the deeper blocks, whose cache then holds fewer entries. Exit positions are the cheap
        places: the package's spans break there. prune_to_fit: when the KV cap (Budget.memory_mb)
        cannot hold the prompt, prune it after the first exit just enough instead of refusing.
        """
        check_request(prompt, sampling, stop, on_text, chat, prune_prompt, prune_to_fit, DECODE_MODES, mode,
                      {"precision": precision, **({} if draft_precision is None else {"draft_precision": draft_precision})},
                      {"max_new_tokens": max_new_tokens, "draft_blocks": draft_blocks, "draft_tokens": draft_tokens,
                       "draft_confidence": draft_confidence, "draft_ngram": draft_ngram,
                       "restart_below": restart_below, "exit_threshold": exit_threshold, "agreement": agreement,
                       "budget_ms": budget_ms, "min_new_tokens": min_new_tokens, "first_token_ms": first_token_ms,
                       "tokens_per_second": tokens_per_second})
        ids = list(prompt) if isinstance(prompt, list) else self.encode(prompt, chat)
        vocab = self.facts.vocab_size
        if ids and max(ids) >= vocab:
            raise InputError(f"prompt token id {max(ids)} is outside this model's vocabulary (ids 0..{vocab - 1})")
        limit = self.facts.max_positions
        if len(ids) + max_new_tokens > limit:
            raise InputError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) pass the model's "
                             f"{limit} positions; shorten the prompt or ask for fewer tokens")

        if precision not in self.precisions():
            raise InputError(f"precision {precision!r} is not in this package ({', '.join(self.precisions())})")
        draft = None
        if mode == "speculative":
            if not sampling.greedy:
                raise InputError("speculative decoding here is exact for greedy decoding only; use temperature 0")
            if precision != "fp32":  # the check runs the variant; only the context drafts for free
                if draft_precision is not None or draft_blocks not in (None, 0) or draft_ngram < 1:
                    raise InputError(f"speculative decoding at precision {precision!r} drafts from the context only: "
                                     f"leave draft_precision and draft_blocks unset and draft_ngram above 0")
                draft_blocks, draft_precision = 0, precision
            if draft_precision is None:
                draft_precision = self._default_draft_precision() if draft_blocks is None else "fp32"
            if draft_precision not in self.precisions():
                raise InputError(f"draft precision {draft_precision!r} is not in this package ({', '.join(self.precisions())})")
            lowered = draft_precision != "fp32"
            if draft_blocks is None:
                draft_blocks = self.num_blocks if lowered else self._default_draft_blocks()
            draft = Draft(draft_blocks, draft_precision, draft_confidence, draft_ngram)
            top = self.num_blocks if lowered else self.num_blocks - 1
            lowest = 0 if draft_ngram > 0 else 1
            if not lowest <= draft.blocks <= top or draft_tokens < 1 or draft_ngram < 0:
                raise InputError(f"draft_blocks must be in {lowest}..{top} (0 only with draft_ngram), "
                                 f"draft_tokens >= 1 and draft_ngram >= 0")
        thresholds, auditor, level_used = None, None, None
        if audit is not None:
            auditor = self._auditor(mode, agreement, exit_threshold, sampling, audit)
            agreement = auditor.state.in_force  # the level, as an earlier audit may have tightened it
            if agreement is None:
                mode = "full"  # no stricter level left: exits off
        if mode == "early-exit":
            thresholds = self._exit_thresholds(exit_threshold, agreement)
            level_used = agreement if exit_threshold is None else None
        prune_prompt = tuple(sorted(prune_prompt))
        for point, fraction in prune_prompt:
            if not (1 <= point < self.num_blocks and 0 < fraction <= 1):
                raise InputError(f"prune_prompt entry ({point}, {fraction}) needs a block in 1..{self.num_blocks - 1} "
                                 f"and a fraction in (0, 1]")
        plan = None
        if first_token_ms is not None or tokens_per_second is not None:
            if mode != "full" or precision != "fp32" or prune_prompt:
                raise InputError("first_token_ms / tokens_per_second choose the precision and pruning themselves: "
                                 "use them with mode 'full' and without precision or prune_prompt")
            plan = plan_generation(device_costs(self), self.precisions(), self.num_blocks, self.exits, len(ids),
                                   max_new_tokens, first_token_ms, tokens_per_second)
            precision, prune_prompt = plan.precision, plan.prune_prompt
        restarting = restart_below is not None and precision != "fp32"
        prune_prompt = self.fit_memory(len(ids), max_new_tokens, prune_prompt, prune_to_fit)
        first = Decoding(self, ids, max_new_tokens, sampling, stop, None if restarting else on_text, budget_ms,
                          min_new_tokens, precision, prune_prompt).run(mode, draft, draft_tokens, thresholds)
        if plan is not None:
            first = replace(first, trace=replace(first.trace, plan=plan.describe(),
                                                 predicted_first_token_ms=plan.predicted_first_token_ms,
                                                 predicted_tokens_per_second=plan.predicted_tokens_per_second))
        if level_used is not None or auditor is not None:
            offered = bool(auditor is not None and first.token_ids
                           and auditor.offer(audited_sequence(ids, first.token_ids), (len(ids), first.token_ids)))
            first = replace(first, trace=replace(first.trace, level_used=level_used, audited=offered))
        spent = first.trace.total_ms
        if not restarting or first.min_log_prob >= restart_below or (
                budget_ms is not None and budget_ms - spent < spent):
            if restarting and on_text is not None and first.text:
                on_text(first.text)
            return first
        again = self.generate(ids, max_new_tokens, sampling, stop, on_text, chat,
                              mode="speculative" if sampling.greedy else "full", draft_precision=precision,
                              draft_tokens=draft_tokens, budget_ms=None if budget_ms is None else budget_ms - spent,
                              min_new_tokens=min_new_tokens, prune_prompt=prune_prompt)
        trace = replace(again.trace, total_ms=spent + again.trace.total_ms,
                        first_token_ms=spent + again.trace.first_token_ms, prefill_ms=first.trace.prefill_ms,
                        restarts=1, restart_changed=again.token_ids != first.token_ids,
                        first_min_log_prob=first.min_log_prob)
        return replace(again, trace=trace)

    def wait_for_audit(self, timeout: float | None = None) -> None:
        """Block until the audit has scored every generation it took (before a process ends)."""
        for auditor in self._auditors.values():
            auditor.wait(timeout)

    def _auditor(self, mode: str, agreement: float | None, exit_threshold: float | None, sampling: Sampling,
                 share: float) -> "Auditor":
        real("audit (a share of generations)", share, 0.0, 1.0, low_open=True)
        if mode != "early-exit" or agreement is None or exit_threshold is not None or not sampling.greedy:
            raise InputError("audit checks a calibrated early-exit level: use it with mode='early-exit', an agreement "
                             "level (not exit_threshold) and greedy decoding (temperature 0)")
        if agreement not in self._auditors:
            self._auditors[agreement] = start_decoder_audit(self, agreement, share)
        self._auditors[agreement].share = share
        return self._auditors[agreement]

    def _exit_thresholds(self, threshold: float | None, agreement: float | None) -> tuple[float | None, ...]:
        if not self.exits or not self._kv:
            raise InputError("early-exit needs a package with exits and kv graphs; re-export it")
        if threshold is not None:
            return (float(threshold),) * len(self.exits)
        if agreement is None:
            raise InputError("early-exit needs an agreement level (or an exit_threshold)")
        level = exact_level(self.manifest.exit_thresholds, agreement)
        if level is None:
            known = ", ".join(f"{t.agreement:g}" for t in self.manifest.exit_thresholds) or "none"
            raise InputError(f"this package has no exit thresholds for agreement {agreement:g} (it has {known}); "
                             f"ask for one of those, pass exit_threshold, or re-export with calibration prompts")
        return level.thresholds

    def _default_draft_precision(self) -> str:
        """The lowered variant that agrees best with fp32 (drafts it writes are accepted most often):
        with context lookups first, the fastest lossless speculation measured on SmolLM2
        (docs/decoders.md). Without one, fp32's first blocks draft."""
        lowered = [(variant.quality.get("next_token_agreement_with_fp32") or 0.0, variant.name)
                   for variant in self.manifest.precision_variants]  # a number or None: manifest_reading.py
        return max(lowered)[1] if lowered else "fp32"

    def _default_draft_blocks(self) -> int:
        middle = self.num_blocks // 2
        return min(self.exits, key=lambda e: abs(e - middle)) if self.exits else middle
