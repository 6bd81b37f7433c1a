"""A loaded edge package that answers texts adaptively.

Per input: tokenize -> embed -> for each block: [deadline guard] -> block -> [exit check]
-> [prune] -> head or exit head. The decisions are the pure functions
of policy.py and pruning.py; this module only sequences them and records what ran.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from functools import partial
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import InputError
from ..manifest import KEEP_TOKENS, ExitHead, ExitThresholds, LengthThresholds, Segment
from ..targets.catalog import usable_target
from ..targets.profile import Profile, find_profile
from . import arguments
from .audit_session import start_audit
from .cost_model import LinearCost, measure_linear_cost
from .memory import check_memory_budget
from .planner import choose_point, choose_precision, parse_auto, policy_of
from .optimized_graphs import enabled
from .graph_runner import GraphRunner
from .package import Package, open_package
from .policy import (AUTO_PRECISION, Budget, Policy, classification_confidence, cosine, should_exit, softmax, stored_level,
                     variant_level)
from .merging import merge_tokens
from .pruning import keep_count, keep_tokens
from .result import Result, Trace
from .sessions import threads_in_use
from .tokenize import TextEncoder, check_texts, length_batches

if TYPE_CHECKING:
    from .generation import DecoderSession
    from .whole_model import WholeModelSession


@dataclass
class _Run:
    """What one input's run has done so far (private to a call, so threads never share it)."""

    started: float
    precision: str = "fp32"
    segments: list[str] = field(default_factory=list)
    milliseconds: dict[str, float] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    restarts: int = 0
    predicted_ms: float = 0.0  # the device profile's prediction for the calls made


class _BatchRows:
    """Which graphs each row of a batch went through."""

    def __init__(self, size: int):
        self.segments: list[list[str]] = [[] for _ in range(size)]

    def ran(self, name: str, rows: np.ndarray) -> None:
        for r in rows:
            self.segments[r].append(name)


@dataclass(frozen=True)
class _Answer:
    output: np.ndarray
    confidence: float | None
    depth: int  # blocks run before answering
    cut_short: bool = False
    hidden: np.ndarray | None = None  # the full model's own state after `depth` blocks, when resumable


class EdgeSession:
    def __init__(self, package: Package, policy: Policy = Policy(), budget: Budget = Budget(),
                 threads: int | None = None, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 profile: Profile | None = None, optimized_cache: bool = False, backend: str = "onnxruntime"):
        self.package = package
        self.profile = profile
        self.operating_point = None  # set by load(policy="auto")
        self.manifest = package.manifest
        self.budget = budget
        self.encoder = TextEncoder(package.path(self.manifest.tokenizer.path), self.manifest.tokenizer)
        self.runner = GraphRunner(package, threads, providers, optimized_cache, backend=backend)
        self._blocks = self.manifest.blocks()
        self._embed = next(s for s in self.manifest.segments if s.kind == "embed")
        self._head = next(s for s in self.manifest.segments if s.kind == "head")
        self.requested_precision = policy.precision
        self.precision_choice = None  # with precision "auto": what was compared, and what won
        if policy.precision == AUTO_PRECISION:
            plain = not policy.keep_schedule and not policy.skip_blocks and policy.restart_below is None
            self.precision_choice = choose_precision(self.manifest, policy.agreement if plain else None,
                                                     lambda name: self.runner.has(self._embed, name))
            policy = replace(policy, precision=self.precision_choice.precision)
        self.policy = policy
        if policy.precision != "fp32":
            self.manifest.precision_variant(policy.precision)  # an unknown name: one line listing the known ones
        if not self.runner.has(self._embed, policy.precision):
            raise InputError(f"this package has no {backend} graphs at precision {policy.precision!r}; "
                             f"run it on another target or precision")
        self.precision, self.level, self.restart_threshold = self._levels(policy)
        self._exits, self._exits_by_length = self._exits_at_level()
        self._keep = dict(policy.keep_schedule)
        self._skip = frozenset(policy.skip_blocks)
        # an exit's state is the full model's own (so a restart can continue from it) only at fp32
        # with every token and every block
        self._resumable = self.precision == "fp32" and not self._keep and not self._skip
        if any(b > len(self._blocks) for b in self._skip) or len(self._skip) >= len(self._blocks):
            raise InputError(f"skip_blocks {policy.skip_blocks} must name some, not all, of blocks 1..{len(self._blocks)}")
        if self._skip & set(self._keep):
            raise InputError(f"keep_schedule prunes after skipped blocks {sorted(self._skip & set(self._keep))}, "
                             f"which produce no token scores; prune after a block that runs")
        bad = [b for b in self._keep if b >= len(self._blocks)]
        if bad:
            raise InputError(f"keep_schedule prunes after blocks {bad}, but the model has {len(self._blocks)} "
                             f"blocks; prune after blocks 1..{len(self._blocks) - 1}")
        # nothing to decide between embed and head: one fused graph instead of a chain of calls
        no_decisions = not self._exits and not self._keep and not self._skip and budget.latency_ms is None \
            and policy.restart_below is None and self.restart_threshold is None
        self._full_span = self._span(("embed", *(b.name for b in self._blocks), "head"))
        self._full = self._full_span if no_decisions else None
        # pruning and nothing else to decide: one graph that prunes inside, if one ranks by the policy's score
        prunes_only = self._keep and not self._exits and not self._skip and budget.latency_ms is None \
            and policy.reduction == "prune"
        self._pruned_full = self._runnable(self.manifest.pruning_span(policy.importance)) if prunes_only else None
        if policy.importance not in self._blocks[0].outputs:
            raise InputError(f"this package's blocks do not output {policy.importance!r} "
                             f"(they give {list(self._blocks[0].outputs[1:])}); re-export it or pick one of those")
        self._importance_output = self._blocks[0].outputs.index(policy.importance)
        self._stages, self._last_stage = self._find_stages()
        self.memory = check_memory_budget(self.manifest, budget.memory_mb, self._graphs_needed(),  # none loaded yet
                                          litert=backend == "litert")
        self.block_cost: LinearCost | None = None
        self.exit_cost: LinearCost | None = None
        self.auditor = start_audit(self) if policy.audit is not None else None
        span = self.manifest.calibration.get("thresholds", {}).get("lengths", {})
        self._calibrated_lengths = (span.get("min", 0), span.get("max", 1 << 30)) if isinstance(span, dict) else (0, 1 << 30)
        self.outside_calibration = 0  # requests whose length the thresholds' calibration never saw
        if budget.latency_ms is not None:
            self._open_graphs()
            if profile is None or any(profile.cost(s.name, p) is None for s, p in self._graphs_needed()):
                self._measure_costs()  # a deadline guard without costs would never trip
            self._warn_if_budget_below_first_step()

    def _levels(self, policy: Policy) -> tuple[str, ExitThresholds | None, float | None]:
        """(precision to start at, its calibrated thresholds, its restart threshold).

        A variant's last threshold guards its final answer. Where calibration found none that holds
        the level, every variant answer would restart: the policy's fallback refuses that, or runs
        fp32 and says so (docs/runtime.md, "What runs when the package cannot do what was asked").
        """
        if policy.agreement is None:
            return policy.precision, None, None
        if policy.precision == "fp32":
            return "fp32", stored_level(self.manifest.exit_thresholds, policy.agreement, policy.fallback), None
        level = variant_level(self.manifest, policy.precision, policy.agreement, policy.fallback)
        if level is None:
            return "fp32", stored_level(self.manifest.exit_thresholds, policy.agreement, policy.fallback), None
        ranges = level.ranges
        unanswered = [r for r in ranges if r.thresholds[-1] is None]
        if unanswered:
            warnings.warn(f"precision {policy.precision!r} certifies no answer at agreement {level.agreement:g} for inputs "
                          f"of {_length_ranges(ranges, unanswered)} tokens: those start at fp32 "
                          f"(trace.precision says so)", UserWarning, stacklevel=3)
        restart = max(r.thresholds[-1] for r in ranges if r.thresholds[-1] is not None)
        return policy.precision, level, restart

    def use_level(self, agreement: float | None) -> None:
        """Run at another stored agreement level from the next request on (None: exits off, fp32)."""
        policy = replace(self.policy, agreement=agreement, audit=None, fallback="nearest",
                         precision=self.policy.precision if agreement is not None else "fp32")
        self.precision, self.level, self.restart_threshold = self._levels(policy)
        self._exits, self._exits_by_length = self._exits_at_level()

    def full_output(self, text: str) -> np.ndarray:
        """The fp32 full model's output for one text (what the audit compares answers with)."""
        state = _Run(started=time.perf_counter(), precision="fp32")
        return self._full_pass(state, self.encoder.encode([text])).output

    def _offer_audit(self, text: str, result: Result) -> Result:
        if not self.auditor.offer(text, result, result.trace.outside_calibration):
            return result
        return replace(result, trace=replace(result.trace, audited=True))

    def _exits_at_level(self) -> tuple[dict, tuple[tuple[int | None, dict], ...]]:
        """(every exit some input may take at this level, and per length range the exits with that
        range's thresholds; empty when the level has one set for all lengths)."""
        if self.level is None:
            return {}, ()
        if not self.level.by_length:
            return self._active_exits(self.level.thresholds), ()
        by_length = tuple((r.max_tokens, self._active_exits(r.thresholds)) for r in self.level.by_length)
        union: dict = {}
        for _, exits in by_length:
            union.update({k: v for k, v in exits.items() if k not in union})
        return union, by_length

    def _restart_threshold_for(self, tokens: int) -> float | None:
        """A precision variant's restart threshold for an input of this many tokens."""
        if self.restart_threshold is None or not self.level.by_length:
            return self.restart_threshold
        return self.level.for_tokens(tokens)[-1]

    def _variant_cannot_answer(self, tokens: int) -> bool:
        """In a length range where calibration found no restart threshold for the variant, every
        variant answer would be redone at fp32: such inputs start at fp32 instead."""
        return self.restart_threshold is not None and self._restart_threshold_for(tokens) is None

    def _exits_for(self, tokens: int) -> dict:
        """The exits, with their thresholds, for an input of this many tokens."""
        for limit, exits in self._exits_by_length:
            if limit is None or tokens <= limit:
                return exits
        return self._exits

    def _active_exits(self, thresholds: tuple[float | None, ...]) -> dict[int, tuple[ExitHead, Segment, float | None]]:
        """Exits worth running with these thresholds: those with one, and for embeddings the exit
        before each of them (their confidence compares consecutive exits)."""
        active: dict[int, tuple[ExitHead, Segment, float | None]] = {}
        for i, exit_head in enumerate(self.manifest.exits):
            threshold = thresholds[i]
            if threshold is None:
                continue
            active[exit_head.after_block] = (exit_head, self.manifest.segment(exit_head.segment), threshold)
            if exit_head.confidence == "consecutive_cosine" and i > 0:
                before = self.manifest.exits[i - 1]
                active.setdefault(before.after_block, (before, self.manifest.segment(before.segment),
                                                       thresholds[i - 1]))
        return active

    def _find_stages(self) -> tuple[dict[int, Segment], Segment | None]:
        """Spans that run a block with its exit (the first with the embedding), and the last block
        with the head: one call per decision instead of two (packages before schema 1.3 have none).
        Where the policy does not prune or merge after a stage, its lean form (no token scores,
        schema 1.6) serves: the scores cost 5-10% of an int8 stage even when nobody reads them."""
        stages = {}
        for exit_head in self.manifest.exits:
            depth = exit_head.after_block
            covers = (*(("embed",) if depth == 1 else ()), self._blocks[depth - 1].name, exit_head.segment)
            runnable = [s for s in self.manifest.spans_covering(covers) if self.runner.has(s, self.precision)]
            if depth in self._keep and self.policy.reduction != "merge":  # merging reads only the state
                runnable = [s for s in runnable if self.policy.importance in s.outputs]
            if runnable:
                stages[depth] = min(runnable, key=lambda s: len(s.outputs))
        return stages, self._span((self._blocks[-1].name, self._head.name))

    def _span(self, covers: tuple[str, ...]) -> Segment | None:
        """The fused graph over these segments, if the package has one this backend can run."""
        return self._runnable(self.manifest.span_covering(covers))

    def _runnable(self, segment: Segment | None) -> Segment | None:
        """The segment, if there is one and this backend has it at the session's precision."""
        return segment if segment is not None and self.runner.has(segment, self.precision) else None

    def _graphs_needed(self) -> list[tuple[Segment, str]]:
        """Every graph (and precision) this policy may call: the memory check counts them, and a
        deadline opens them up front. Only these: each onnxruntime session holds its own copy of its
        weights, so opening stage spans and the blocks they cover would double the memory."""
        if self._full is not None:
            return [(self._full, self.precision)]
        if self._pruned_full is not None:
            needed = [self._pruned_full]
        else:
            needed = [] if 1 in self._stages and 1 in self._exits else [self._embed]
            for depth in range(1, len(self._blocks) + 1):
                needed += self._next_calls(depth, depth in self._exits)
        if self.budget.latency_ms is not None:  # a cut-short run answers from an exit head, or the head
            needed += [self.manifest.segment(e.segment) for e in self.manifest.exits] + [self._head]
        graphs = [(s, self.precision) for s in {s.name: s for s in needed}.values()]
        restarts = self.precision != "fp32" or self.policy.restart_below is not None
        if restarts and self._full_span is not None:
            graphs.append((self._full_span, "fp32"))
        return graphs

    def _open_graphs(self) -> None:
        """A deadline cannot absorb a session being created mid-run: open now what the policy may call."""
        for segment, precision in self._graphs_needed():
            self.runner.graph(segment, precision)

    def _measure_costs(self) -> None:
        """Without a device profile, the deadline guard plans on one block and one exit timed now."""
        hidden_size = self.manifest.model.hidden_size

        def runner(segment: Segment):
            graph = self.runner.graph(segment, self.precision)

            def run(tokens: int) -> None:
                feeds = {"hidden": np.zeros((1, tokens, hidden_size), np.float32),
                         "attention_bias": np.zeros((1, tokens), np.float32)}
                graph.run(None, {k: feeds[k] for k in segment.inputs})
            return run

        self.block_cost = measure_linear_cost(runner(self._blocks[0]))
        if self.manifest.exits:
            self.exit_cost = measure_linear_cost(runner(self.manifest.segment(self.manifest.exits[0].segment)))

    def _warn_if_budget_below_first_step(self) -> None:
        """The guard never cuts before the first block (an answer needs one): a budget below that
        step's predicted cost will be overrun by every request, so say so now."""
        tokens = 16
        first = self._step_cost(1, tokens, 1 in self._exits, self.precision)
        if first is not None and first > self.budget.latency_ms:
            warnings.warn(f"latency budget {self.budget.latency_ms:g} ms is below the cheapest answer this policy "
                          f"gives (~{first:.2f} ms predicted for the first block at {tokens} tokens); requests will "
                          f"overrun it (trace.over_budget says which)", UserWarning, stacklevel=4)

    # --- running ---------------------------------------------------------------------------------

    def run(self, texts: str | list[str]) -> Result | list[Result]:
        results = self._run(texts)
        if self.auditor is None:
            return results
        if isinstance(texts, str):
            return self._offer_audit(texts, results)  # type: ignore[arg-type]
        return [self._offer_audit(text, result) for text, result in zip(texts, results)]  # type: ignore[arg-type]

    def _run(self, texts: str | list[str]) -> Result | list[Result]:
        if isinstance(texts, str):
            return self._run_one(texts)
        if not isinstance(texts, (list, tuple)):
            raise InputError(f"run() takes a string or a list of strings, not {type(texts).__name__}")
        if not texts:
            raise InputError("run() got an empty list; pass at least one text")
        if self._full is not None and len(texts) > 1:
            return self._run_batch(list(texts))
        if len(texts) > 1 and not self._keep and self.budget.latency_ms is None:
            return self._run_batch_adaptive(list(texts))
        return [self._run_one(text) for text in texts]

    def _run_batch(self, texts: list[str], batch_size: int = 32) -> list[Result]:
        """With nothing to decide per input, texts of similar length run padded together through
        the fused graph (padding masked by attention_bias); each result reports the batch's time."""
        results: list[Result | None] = [None] * len(texts)
        for index in length_batches(texts, batch_size):
            state = _Run(started=time.perf_counter(), precision=self.precision)
            batch = self.encoder.encode([texts[i] for i in index])
            outputs = self._call(state, self._full, batch.span_feeds())[0]
            for row, i in enumerate(index):
                tokens = int(batch.attention_mask[row].sum())
                row_state = _Run(started=state.started, precision=state.precision, segments=list(state.segments),
                                 milliseconds=dict(state.milliseconds), tokens=[tokens] * len(self._blocks))
                answer = _Answer(outputs[row], self._final_confidence(outputs[row]), len(self._blocks))
                results[i] = self._answer(row_state, batch.truncated[row], answer)
        return results  # type: ignore[return-value]

    def _run_batch_adaptive(self, texts: list[str], batch_size: int = 16) -> list[Result]:
        """Exits (and skips and restarts) decide per row: texts of similar length run padded together,
        and rows leave the batch at the exit that answers them. Pruning and merging change each row's
        length and a deadline is per request, so those policies run input by input instead."""
        check_texts(texts)
        results: list[Result | None] = [None] * len(texts)
        for index in length_batches(texts, batch_size):
            state = _Run(started=time.perf_counter(), precision=self.precision)
            batch = self.encoder.encode([texts[i] for i in index])
            rows = _BatchRows(len(index))
            answers = self._adaptive_batch(state, batch, rows)
            lengths = batch.attention_mask.sum(1)
            for r, i in enumerate(index):
                if self._unsure(answers[r], int(lengths[r]), self.precision):  # rare: runs alone, restart and all
                    results[i] = self._run_one(texts[i])
                    continue
                depth = answers[r].depth
                row_state = _Run(started=state.started, precision=self.precision, segments=rows.segments[r],
                                 milliseconds=dict(state.milliseconds),
                                 tokens=[0 if d in self._skip else int(lengths[r]) for d in range(1, depth + 1)],
                                 predicted_ms=state.predicted_ms)
                results[i] = self._answer(row_state, batch.truncated[r], answers[r])
        return results  # type: ignore[return-value]

    def _unsure(self, answer: _Answer, tokens: int, precision: str) -> bool:
        """Is this answer's confidence under the restart limit? A precision variant's final answer
        is held to its calibrated restart threshold (its length range's; with none there, it is
        always redone); any answer to the policy's restart_below."""
        limit = self.policy.restart_below
        if precision != "fp32" and answer.depth == len(self._blocks) and self.restart_threshold is not None:
            restart_threshold = self._restart_threshold_for(tokens)
            if restart_threshold is None:
                return True
            limit = max(limit or 0.0, restart_threshold)
        return limit is not None and answer.confidence is not None and answer.confidence < limit

    def _adaptive_batch(self, state: _Run, batch, rows: "_BatchRows") -> list[_Answer]:
        first = batch.span_feeds()
        bias = first["attention_bias"]
        active = np.arange(len(bias))
        row_exits = [self._exits_for(int(tokens)) for tokens in batch.attention_mask.sum(1)]
        answers: list[_Answer | None] = [None] * len(bias)
        previous: list[np.ndarray | None] = [None] * len(bias)
        hidden = None
        num_blocks = len(self._blocks)

        def call(segment: Segment, feeds: dict) -> list[np.ndarray]:
            rows.ran(segment.name, active)
            return self._call(state, segment, feeds)

        if not (1 in self._exits and 1 in self._stages and 1 not in self._skip):
            hidden = call(self._embed, first)[0]
        for depth in range(1, num_blocks + 1):
            skipped = depth in self._skip
            feeds = first if hidden is None else {"hidden": hidden, "attention_bias": bias[active]}
            if depth == num_blocks and self._last_stage is not None and not skipped:
                outputs = call(self._last_stage, feeds)[0]
                for j, r in enumerate(active):
                    answers[r] = _Answer(outputs[j], self._final_confidence(outputs[j]), num_blocks)
                return answers  # type: ignore[return-value]
            hidden, _, exit_output = self._block_step(call, depth, feeds, self._exits)
            if exit_output is None:
                continue
            exit_head = self._exits[depth][0]
            staying = []
            for j, r in enumerate(active):
                confidence = self._confidence(exit_head, exit_output[j], previous[r])
                previous[r] = exit_output[j]
                if should_exit(confidence, row_exits[r].get(depth, (None, None, None))[2]):
                    answers[r] = _Answer(exit_output[j], confidence, depth)
                else:
                    staying.append(j)
            if not staying:
                return answers  # type: ignore[return-value]
            active, hidden = active[staying], hidden[staying]
        outputs = call(self._head, {"hidden": hidden, "attention_bias": bias[active]})[0]
        for j, r in enumerate(active):
            answers[r] = _Answer(outputs[j], self._final_confidence(outputs[j]), num_blocks)
        return answers  # type: ignore[return-value]

    def _block_step(self, call: Callable[[Segment, dict], list[np.ndarray]], depth: int, feeds: dict,
                    exits: dict) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray | None]:
        """Block `depth` and its exit where the run tests one: a single stage call when the package
        fused the two. Returns the next hidden state, the block's outputs (None when the block is
        skipped: the state passes unchanged) and the exit's output (None without an exit here)."""
        skipped = depth in self._skip
        with_exit = depth in exits and depth < len(self._blocks)
        stage = self._stages.get(depth) if with_exit and not skipped else None
        outputs, exit_output = None, None
        if stage is not None:
            *outputs, exit_output = call(stage, feeds)
        elif not skipped:
            outputs = call(self._blocks[depth - 1], feeds)
        hidden = outputs[0] if outputs is not None else feeds["hidden"]
        if with_exit and exit_output is None:
            exit_output = call(exits[depth][1], {"hidden": hidden, "attention_bias": feeds["attention_bias"]})[0]
        return hidden, outputs, exit_output

    def _call(self, state: _Run, segment: Segment, feeds: dict[str, np.ndarray],
              priced_as: tuple[tuple[Segment, int], ...] = ()) -> list[np.ndarray]:
        """Run one graph; priced_as: the segments (and their token counts) whose profiled costs
        predict this call, when the profile does not price the graph itself."""
        graph = self.runner.graph(segment, state.precision)
        inputs = {k: feeds[k] for k in segment.inputs}
        t0 = time.perf_counter()
        out = graph.run(None, inputs)
        state.milliseconds[segment.name] = (time.perf_counter() - t0) * 1000
        state.segments.append(segment.name)
        if self.profile is not None:
            batch, tokens = inputs[segment.inputs[0]].shape[:2]
            for piece, piece_tokens in priced_as or ((segment, tokens),):
                # a graph the profile lacks (probed before a variant was added) makes the whole prediction unknown
                state.predicted_ms += self.profile.predict_ms(piece.name, state.precision, piece_tokens, batch) or np.nan
        return out

    def _next_calls(self, depth: int, exit_next: bool) -> list[Segment]:
        """The graphs the step to `depth` blocks calls (the last block brings the head)."""
        if depth == len(self._blocks) and depth not in self._skip:
            return [self._last_stage] if self._last_stage is not None else [self._blocks[-1], self._head]
        if depth in self._skip:
            last = depth == len(self._blocks)
            return [self._head] if last else [self._exits[depth][1]] if exit_next and depth in self._exits else []
        if exit_next and depth in self._exits:
            stage = self._stages.get(depth)
            return [stage] if stage is not None else [self._blocks[depth - 1], self._exits[depth][1]]
        return [self._blocks[depth - 1]]

    def _step_cost(self, depth: int, tokens: int, exit_next: bool, precision: str) -> float | None:
        """Predicted p90 milliseconds of the next step, from the device profile, else from the
        block and exit timed at load."""
        if self.profile is not None:
            calls = self._next_calls(depth, exit_next)
            costs = [self.profile.predict_ms(s.name, precision, tokens, tail=True) for s in calls]
            if all(c is not None for c in costs):
                return sum(costs) + self.profile.overhead_per_call_ms * len(costs)
        if self.block_cost is None:  # only without a latency budget, which measures costs at load
            return None
        cost = self.block_cost.predict(tokens)
        if exit_next and self.exit_cost is not None:
            cost += self.exit_cost.predict(tokens)
        return cost

    def _deadline_passes(self, state: _Run, depth: int, tokens: int, exit_next: bool) -> bool:
        """Would running the next block (and its exit) overrun the latency budget? (The pass asks only
        when the budget has a latency limit.)"""
        cost = self._step_cost(depth, tokens, exit_next, state.precision)
        if cost is None:
            return False
        elapsed = (time.perf_counter() - state.started) * 1000
        return elapsed + cost > self.budget.latency_ms

    def _run_one(self, text: str) -> Result:
        state = _Run(started=time.perf_counter(), precision=self.precision)
        batch = self.encoder.encode([text])
        if self._variant_cannot_answer(batch.input_ids.shape[1]):
            state.precision = "fp32"
            answer = self._full_pass(state, batch)
        elif self._full is not None:
            answer = self._full_pass(state, batch)
        elif self._pruned_full is not None:
            answer = self._pruned_pass(state, batch)
        else:
            answer = self._adaptive_pass(state, batch, self._exits_for(batch.input_ids.shape[1]), self._keep,
                                         deadline=True)
        if self._should_restart(state, answer, batch):
            state.restarts += 1
            state.precision = "fp32"
            answer = self._resume(state, answer) if answer.hidden is not None else self._full_pass(state, batch)
        return self._answer(state, batch.truncated[0], answer)

    def _resume(self, state: _Run, answer: _Answer) -> _Answer:
        """Restart by going deeper: without pruning, merging or skipping, at fp32, the state an exit
        answered from is the full model's own, so continuing from it gives the full model's answer
        for the cost of the remaining blocks only."""
        hidden = answer.hidden
        bias = np.zeros(hidden.shape[:2], dtype=np.float32)
        num_blocks = len(self._blocks)
        for depth in range(answer.depth + 1, num_blocks + 1):
            state.tokens.append(int(hidden.shape[1]))
            feeds = {"hidden": hidden, "attention_bias": bias}
            if depth == num_blocks and self._last_stage is not None:
                output = self._call(state, self._last_stage, feeds)[0][0]
                return _Answer(output, self._final_confidence(output), num_blocks)
            hidden = self._call(state, self._blocks[depth - 1], feeds)[0]
        output = self._call(state, self._head, {"hidden": hidden, "attention_bias": bias})[0][0]
        return _Answer(output, self._final_confidence(output), num_blocks)

    def _should_restart(self, state: _Run, answer: _Answer, batch) -> bool:
        """Confidence-based restart: a low-confidence cheap answer is redone at full depth with every
        token, when the remaining latency budget covers the predicted cost of doing so. A precision
        variant's final answer restarts at fp32 below its calibrated threshold (an exit that passed
        its own threshold never restarts)."""
        if answer.cut_short or not self._unsure(answer, batch.input_ids.shape[1], state.precision):
            return False
        if state.precision == "fp32" and answer.depth == len(self._blocks) and not self._keep and not self._skip:
            return False  # already the full model's own answer: a restart would give it again
        if self.budget.latency_ms is None:
            return True
        tokens = batch.input_ids.shape[1]
        predicted = None
        if self.profile is not None and self._full_span is not None:
            predicted = self.profile.predict_ms(self._full_span.name, "fp32", tokens, tail=True)
        if predicted is None and self.block_cost is not None:
            predicted = self.block_cost.predict(tokens) * len(self._blocks)
        if predicted is None:  # cannot happen under a latency budget (costs are measured at load)
            return False
        return (time.perf_counter() - state.started) * 1000 + predicted <= self.budget.latency_ms

    def _full_pass(self, state: _Run, batch) -> _Answer:
        """The strongest point: the whole model on every token, one fused graph when there is one."""
        span = self._full_span
        if span is None:  # a schema 1.0 package: the chain of segments, deciding nothing
            return self._adaptive_pass(state, batch, {}, {}, deadline=False)
        feeds = {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids,
                 "attention_bias": np.zeros(batch.input_ids.shape, dtype=np.float32)}
        output = self._call(state, span, feeds)[0][0]
        state.tokens.extend([int(batch.input_ids.shape[1])] * len(self._blocks))
        return _Answer(output, self._final_confidence(output), len(self._blocks))

    def _pruned_pass(self, state: _Run, batch) -> _Answer:
        """Token pruning with nothing else to decide: one call of the graph that prunes inside
        (manifest.PRUNED_FULL), told the counts the chain below would keep after each block."""
        original_tokens = batch.input_ids.shape[1]
        protected = batch.special_mask[0]
        protected_count = int(protected.sum())
        counts, current = [], original_tokens
        for depth in range(1, len(self._blocks)):
            if depth in self._keep:
                current = keep_count(original_tokens, current, self._keep[depth], protected_count)
            counts.append(current)
        feeds = {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids,
                 "attention_bias": np.zeros(batch.input_ids.shape, dtype=np.float32),
                 "protected": protected[None].astype(np.float32), KEEP_TOKENS: np.array(counts, dtype=np.int64)}
        entering = [original_tokens, *counts]  # tokens entering each block
        # priced as the chain it replaces: the profile times graphs by token count, not keep schedule
        priced_as = ((self._embed, original_tokens), *zip(self._blocks, entering), (self._head, entering[-1]))
        output = self._call(state, self._pruned_full, feeds, priced_as)[0][0]
        state.tokens.extend(entering)
        return _Answer(output, self._final_confidence(output), len(self._blocks))

    def _adaptive_pass(self, state: _Run, batch, exits: dict, keep_schedule: dict, deadline: bool) -> _Answer:
        bias = np.zeros(batch.input_ids.shape, dtype=np.float32)
        feeds = {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids, "attention_bias": bias}
        hidden: np.ndarray | None = None  # None until the embedding has run (a first stage runs it)
        if not (1 in exits and 1 in self._stages and 1 not in self._skip):
            hidden = self._call(state, self._embed, feeds)[0]
        protected = batch.special_mask[0]
        original_tokens = batch.input_ids.shape[1]
        best: _Answer | None = None  # the deepest exit answer so far
        previous_exit: np.ndarray | None = None
        num_blocks = len(self._blocks)
        call = partial(self._call, state)
        deadline = deadline and self.budget.latency_ms is not None
        for depth in range(1, num_blocks + 1):
            tokens = original_tokens if hidden is None else int(hidden.shape[1])
            if deadline and depth > 1 and self._deadline_passes(state, depth, tokens,
                                                                depth in exits or depth == num_blocks):
                return self._anytime(state, hidden, bias, depth - 1, best)
            skipped = depth in self._skip  # layer skipping: the state passes this block unchanged
            state.tokens.append(0 if skipped else tokens)
            if hidden is not None:
                feeds = {"hidden": hidden, "attention_bias": bias}
            if depth == num_blocks and self._last_stage is not None and not skipped:
                output = self._call(state, self._last_stage, feeds)[0][0]
                return _Answer(output, self._final_confidence(output), num_blocks)
            hidden, outputs, exit_output = self._block_step(call, depth, feeds, exits)
            if exit_output is not None:
                exit_head, _, threshold = exits[depth]
                output = exit_output[0]
                confidence = self._confidence(exit_head, output, previous_exit)
                previous_exit, best = output, _Answer(output, confidence, depth,
                                                      hidden=hidden if self._resumable else None)
                if should_exit(confidence, threshold):
                    return best
            if depth in keep_schedule:
                keep = keep_count(original_tokens, hidden.shape[1], keep_schedule[depth], int(protected.sum()))
                if self.policy.reduction == "merge":
                    merged, merged_bias, protected = merge_tokens(hidden[0], bias[0], protected, keep)
                    hidden, bias = merged[None], merged_bias[None]
                else:
                    index = keep_tokens(outputs[self._importance_output][0], protected, keep)
                    hidden, bias, protected = hidden[:, index], bias[:, index], protected[index]
        output = self._call(state, self._head, {"hidden": hidden, "attention_bias": bias})[0][0]
        return _Answer(output, self._final_confidence(output), num_blocks)

    def _anytime(self, state: _Run, hidden, bias, depth: int, best: _Answer | None) -> _Answer:
        """The deadline guard tripped after `depth` blocks: answer from the deepest exit reached,
        or from an exit head on the current state when none has run yet."""
        if best is None or best.depth < depth:
            exit_here = next((e for e in self.manifest.exits if e.after_block == depth), None)
            if exit_here is not None:
                output = self._call(state, self.manifest.segment(exit_here.segment),
                                    {"hidden": hidden, "attention_bias": bias})[0][0]
                best = _Answer(output, self._confidence(exit_here, output, None), depth)
        if best is None:  # no exit at or before this depth: the head is the only answer there is
            output = self._call(state, self._head, {"hidden": hidden, "attention_bias": bias})[0][0]
            best = _Answer(output, self._final_confidence(output), depth)
        return _Answer(best.output, best.confidence, best.depth, cut_short=True)

    def _final_confidence(self, output: np.ndarray) -> float | None:
        return classification_confidence(output) if self.manifest.model.task == "text-classification" else None

    @staticmethod
    def _confidence(exit_head: ExitHead, output: np.ndarray, previous: np.ndarray | None) -> float | None:
        if exit_head.confidence == "max_prob":
            return classification_confidence(output)
        return cosine(output, previous) if previous is not None else None

    def _answer(self, state: _Run, truncated: bool, answer: _Answer) -> Result:
        output, confidence = answer.output, answer.confidence
        tokens = next((t for t in state.tokens if t), 0)
        outside = self.level is not None and not self._calibrated_lengths[0] <= tokens <= self._calibrated_lengths[1]
        self.outside_calibration += outside
        total_ms = (time.perf_counter() - state.started) * 1000
        trace = Trace(segments=tuple(state.segments), tokens_per_block=tuple(state.tokens),
                      exit_after_block=answer.depth, restarts=state.restarts,
                      milliseconds=state.milliseconds, total_ms=round(total_ms, 4),
                      truncated=truncated, level_used=self.level.agreement if self.level else None,
                      level_requested=self.policy.agreement, precision_requested=self.requested_precision,
                      threads=self.runner.intra_op_threads,
                      over_budget=self.budget.latency_ms is not None and total_ms > self.budget.latency_ms,
                      deadline_cut=answer.cut_short, precision=state.precision,
                      predicted_ms=round(state.predicted_ms + self.profile.overhead_ms(len(state.segments)), 4)
                      if self.profile is not None and np.isfinite(state.predicted_ms) else None,
                      profile=self.profile.key if self.profile is not None else None, outside_calibration=outside)
        if self.manifest.model.task == "text-classification":
            probabilities = softmax(output)
            labels = self.manifest.model.labels or tuple(str(i) for i in range(len(output)))
            return Result(labels[int(probabilities.argmax())], probabilities, None, confidence, trace)
        return Result(None, None, output.astype(np.float32), confidence, trace)


def _length_ranges(ranges: tuple[LengthThresholds, ...], chosen: list[LengthThresholds]) -> str:
    """'1-16, 65-128' for the chosen ranges (each range runs from its predecessor's limit + 1)."""
    spans, low = [], 1
    for r in ranges:
        if r in chosen:
            spans.append(f"{low}-{r.max_tokens}" if r.max_tokens is not None else f"{low} or more")
        low = (r.max_tokens or 0) + 1
    return ", ".join(spans)


def load(package: str | os.PathLike[str], target: str = "cpu", budget: Budget = Budget(),
         policy: Policy | str = Policy(), threads: int | None = None, verify_key: object = None,
         profile: str | os.PathLike[str] | None = "auto", optimized_cache: bool = True
         ) -> "EdgeSession | DecoderSession | WholeModelSession":
    """Open and verify a package, ready to run on a target (`edgeinfer targets` lists them).

    A text-generation package opens as a DecoderSession (runtime/generation.py: `generate()`), with
    budget.memory_mb as the cap on its KV cache; a whole-model package (one graph, exported through
    Optimum) as a WholeModelSession (runtime/whole_model.py).

    verify_key (an Ed25519 public key: PEM path or bytes) refuses packages not signed by it.
    profile: "auto" uses the profile `edgeinfer probe` stored for this package on this device, if
    any; a path uses that file (with a warning when it was measured elsewhere); None uses none.
    policy: a Policy, or "auto" / "auto:0.985": the operating point `edgeinfer calibrate` stored
    that is cheapest at that agreement (0.99 by default), or, with budget.latency_ms, the most
    agreeing point the device profile predicts to fit (session.operating_point names it).
    optimized_cache: keep each graph as onnxruntime optimized it on this device in the user cache
    (runtime/optimized_graphs.py), so later processes start faster at the cost of disk.
    """
    package = arguments.path("package", package)
    if threads is not None:
        arguments.whole("threads", threads, 1, arguments.max_threads())
    if not isinstance(policy, (Policy, str)):
        raise InputError(f"policy takes an edgeinfer.Policy or 'auto[:AGREEMENT]', not {type(policy).__name__}")
    if not isinstance(budget, Budget):
        raise InputError(f"budget takes an edgeinfer.Budget (e.g. Budget(latency_ms=5)), not {type(budget).__name__}")
    if profile is not None and profile != "auto":
        profile = arguments.path("profile", profile)
    if not isinstance(target, str):
        raise InputError(f"target takes a target name such as 'cpu' (see `edgeinfer targets`), not {target!r}")
    chosen = usable_target(target)
    opened = open_package(package, verify_key=verify_key)
    if chosen.backend == "litert" and opened.manifest.litert is None:
        raise InputError(f"{Path(package).name} has no LiteRT graphs; add them with "
                         f"`edgeinfer convert {package} --to litert` (or export with --formats onnx,litert)")
    if opened.manifest.model.task == "text-generation":
        from .generation import DecoderSession

        return DecoderSession(opened, threads, chosen.providers, memory_mb=budget.memory_mb)
    found = find_profile(opened.root, chosen.name, threads_in_use(threads),
                         None if profile == "auto" else profile) if profile is not None else None
    if opened.manifest.is_whole:
        from .whole_model import WholeModelSession

        if isinstance(policy, str):  # no operating points to choose between: the whole model at that level
            policy = Policy(agreement=parse_auto(policy))
        return WholeModelSession(opened, policy, budget, threads, chosen.providers, found, enabled(optimized_cache))
    point = None
    if isinstance(policy, str):
        point = _auto_point(opened.manifest, policy, budget, found)
        policy = policy_of(point)
    session = EdgeSession(opened, policy, budget, threads, chosen.providers, found, enabled(optimized_cache),
                          backend=chosen.backend)
    session.operating_point = point
    return session


def _auto_point(manifest, spec: str, budget: Budget, profile: Profile | None):
    agreement = parse_auto(spec)  # one line for what is not 'auto[:AGREEMENT]'
    full_ms = None
    if budget.latency_ms is not None:
        record = manifest.calibration.get("operating_points", {})
        full = manifest.full_depth()
        if profile is not None and full is not None:
            full_ms = profile.predict_ms(full.name, "fp32", int(record.get("mean_tokens", 32)))
        full_ms = full_ms or record.get("full_model_ms")
    return choose_point(manifest, agreement, budget.latency_ms, full_ms)
