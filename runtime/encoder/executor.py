"""Walks a plan for one input, or for a batch of them.

Per input: embed -> for each block: [deadline check] -> block or stage -> [exit test] -> [prune or
merge] -> head; then, if the answer is unsure, resume or restart. The decisions are the plan's and
the pure functions of policy.py and pruning.py; this module only sequences the steps of steps.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from ...manifest import KEEP_TOKENS
from ...targets.profile import Profile
from ..graph_runner import GraphRunner
from ..policy import should_exit
from ..pruning import keep_count
from ..tokenize import EncodedBatch
from .plan import ExitMap, Plan
from .steps import (Answer, RunState, StepCosts, anytime, block_step, call_graph, deadline_passes, exit_confidence,
                    final_confidence, reduce_tokens)


@dataclass(frozen=True)
class Executor:
    plan: Plan
    runner: GraphRunner
    task: str
    profile: Profile | None = None
    costs: StepCosts | None = None  # measured at load under a latency budget without a profile

    def call(self, state: RunState, segment, feeds: dict, priced_as: tuple = ()) -> list[np.ndarray]:
        return call_graph(self.runner, self.profile, state, segment, feeds, priced_as)

    def final(self, output: np.ndarray, depth: int) -> Answer:
        return Answer(output, final_confidence(self.task, output), depth)


def run_one(ex: Executor, batch: EncodedBatch) -> tuple[RunState, Answer]:
    """One input: the plan's pass, then a restart if its answer is unsure."""
    plan = ex.plan
    state = RunState(started=time.perf_counter(), precision=plan.precision)
    tokens = batch.input_ids.shape[1]
    if plan.variant_cannot_answer(tokens):
        state.precision = "fp32"
        answer = full_pass(ex, state, batch)
    elif plan.full is not None:
        answer = full_pass(ex, state, batch)
    elif plan.pruned_full is not None:
        answer = pruned_pass(ex, state, batch)
    else:
        answer = adaptive_pass(ex, state, batch, plan.exits_for(tokens), deadline=True)
    if should_restart(ex, state, answer, tokens):
        state.restarts += 1
        state.precision = "fp32"
        answer = resume(ex, state, answer) if answer.hidden is not None else full_pass(ex, state, batch)
    return state, answer


def full_pass(ex: Executor, state: RunState, batch: EncodedBatch) -> Answer:
    """The strongest point: the whole model on every token, one fused graph when there is one."""
    plan = ex.plan
    if plan.full_span is None:  # a schema 1.0 package: the chain of segments, deciding nothing
        return adaptive_pass(ex, state, batch, {}, deadline=False, keep_schedule={})
    output = ex.call(state, plan.full_span, batch.span_feeds())[0][0]
    state.tokens.extend([int(batch.input_ids.shape[1])] * len(plan.blocks))
    return ex.final(output, len(plan.blocks))


def pruned_pass(ex: Executor, state: RunState, batch: EncodedBatch) -> Answer:
    """Token pruning with nothing else to decide: one call of the graph that prunes inside
    (manifest.PRUNED_FULL), told the counts the chain would keep after each block."""
    plan = ex.plan
    original_tokens = batch.input_ids.shape[1]
    protected = batch.special_mask[0]
    counts, current = [], original_tokens
    for depth in range(1, len(plan.blocks)):
        if depth in plan.keep:
            current = keep_count(original_tokens, current, plan.keep[depth], int(protected.sum()))
        counts.append(current)
    feeds = {**batch.span_feeds(), "protected": protected[None].astype(np.float32),
             KEEP_TOKENS: np.array(counts, dtype=np.int64)}
    entering = [original_tokens, *counts]  # tokens entering each block
    # priced as the chain it replaces: the profile times graphs by token count, not keep schedule
    priced_as = ((plan.embed, original_tokens), *zip(plan.blocks, entering), (plan.head, entering[-1]))
    output = ex.call(state, plan.pruned_full, feeds, priced_as)[0][0]
    state.tokens.extend(entering)
    return ex.final(output, len(plan.blocks))


def adaptive_pass(ex: Executor, state: RunState, batch: EncodedBatch, exits: ExitMap, deadline: bool,
                  keep_schedule=None) -> Answer:
    plan = ex.plan
    keep_schedule = plan.keep if keep_schedule is None else keep_schedule
    feeds = batch.span_feeds()  # one text: no padding, every bias 0
    bias = feeds["attention_bias"]
    hidden: np.ndarray | None = None  # None until the embedding has run (a first stage runs it)
    if not plan.first_stage_embeds(exits):
        hidden = ex.call(state, plan.embed, feeds)[0]
    protected = batch.special_mask[0]
    original_tokens = batch.input_ids.shape[1]
    best: Answer | None = None  # the deepest exit answer so far
    previous_exit: np.ndarray | None = None
    num_blocks = len(plan.blocks)
    call = partial(ex.call, state)
    deadline = deadline and plan.latency_ms is not None
    for depth in range(1, num_blocks + 1):
        tokens = original_tokens if hidden is None else int(hidden.shape[1])
        if deadline and depth > 1 and deadline_passes(plan, ex.profile, ex.costs, state, depth, tokens,
                                                      depth in exits or depth == num_blocks):
            return anytime(plan, ex.task, call, hidden, bias, depth - 1, best)
        skipped = depth in plan.skip  # layer skipping: the state passes this block unchanged
        state.tokens.append(0 if skipped else tokens)
        if hidden is not None:
            feeds = {"hidden": hidden, "attention_bias": bias}
        if depth == num_blocks and plan.last_stage is not None and not skipped:
            return ex.final(call(plan.last_stage, feeds)[0][0], num_blocks)
        hidden, outputs, exit_output = block_step(plan, call, depth, feeds, exits)
        if exit_output is not None:
            step = exits[depth]
            output = exit_output[0]
            confidence = exit_confidence(step.head, output, previous_exit)
            previous_exit, best = output, Answer(output, confidence, depth, hidden=hidden if plan.resumable else None)
            if should_exit(confidence, step.threshold):
                return best
        if depth in keep_schedule:
            keep = keep_count(original_tokens, hidden.shape[1], keep_schedule[depth], int(protected.sum()))
            hidden, bias, protected = reduce_tokens(plan, hidden, bias, protected, outputs, keep)
    return ex.final(call(plan.head, {"hidden": hidden, "attention_bias": bias})[0][0], num_blocks)


def resume(ex: Executor, state: RunState, answer: Answer) -> Answer:
    """Restart by going deeper: without pruning, merging or skipping, at fp32, the state an exit
    answered from is the full model's own, so continuing from it gives the full model's answer for
    the cost of the remaining blocks only."""
    plan = ex.plan
    hidden = answer.hidden
    bias = np.zeros(hidden.shape[:2], dtype=np.float32)
    num_blocks = len(plan.blocks)
    for depth in range(answer.depth + 1, num_blocks + 1):
        state.tokens.append(int(hidden.shape[1]))
        feeds = {"hidden": hidden, "attention_bias": bias}
        if depth == num_blocks and plan.last_stage is not None:
            return ex.final(ex.call(state, plan.last_stage, feeds)[0][0], num_blocks)
        hidden = ex.call(state, plan.blocks[depth - 1], feeds)[0]
    return ex.final(ex.call(state, plan.head, {"hidden": hidden, "attention_bias": bias})[0][0], num_blocks)


def unsure(plan: Plan, answer: Answer, tokens: int, precision: str) -> bool:
    """Is this answer's confidence under the restart limit? A precision variant's final answer is
    held to its calibrated restart threshold (its length range's; with none there, it is always
    redone); any answer to the policy's restart_below."""
    limit = plan.policy.restart_below
    if precision != "fp32" and answer.depth == len(plan.blocks) and plan.restart_threshold is not None:
        restart_threshold = plan.restart_threshold_for(tokens)
        if restart_threshold is None:
            return True
        limit = max(limit or 0.0, restart_threshold)
    return limit is not None and answer.confidence is not None and answer.confidence < limit


def should_restart(ex: Executor, state: RunState, answer: Answer, tokens: int) -> bool:
    """Confidence-based restart: a low-confidence cheap answer is redone at full depth with every
    token, when the remaining latency budget covers the predicted cost of doing so. A precision
    variant's final answer restarts at fp32 below its calibrated threshold (an exit that passed its
    own threshold never restarts)."""
    plan = ex.plan
    if answer.cut_short or not unsure(plan, answer, tokens, state.precision):
        return False
    if state.precision == "fp32" and answer.depth == len(plan.blocks) and not plan.keep and not plan.skip:
        return False  # already the full model's own answer: a restart would give it again
    if plan.latency_ms is None:
        return True
    predicted = None
    if ex.profile is not None and plan.full_span is not None:
        predicted = ex.profile.predict_ms(plan.full_span.name, "fp32", tokens, tail=True)
    if predicted is None and ex.costs is not None:
        predicted = ex.costs.block.predict(tokens) * len(plan.blocks)
    if predicted is None:  # cannot happen under a latency budget (costs are measured at load)
        return False
    return (time.perf_counter() - state.started) * 1000 + predicted <= plan.latency_ms


class BatchRows:
    """Which graphs each row of a batch went through."""

    def __init__(self, size: int):
        self.segments: list[list[str]] = [[] for _ in range(size)]

    def ran(self, name: str, rows: np.ndarray) -> None:
        for r in rows:
            self.segments[r].append(name)


def adaptive_batch(ex: Executor, state: RunState, batch: EncodedBatch, rows: BatchRows) -> list[Answer]:
    """Every row of a padded batch through the plan's exits: rows leave at the exit that answers them."""
    plan = ex.plan
    first = batch.span_feeds()
    bias = first["attention_bias"]
    active = np.arange(len(bias))
    row_exits = [plan.exits_for(int(tokens)) for tokens in batch.attention_mask.sum(1)]
    answers: list[Answer | None] = [None] * len(bias)
    previous: list[np.ndarray | None] = [None] * len(bias)
    hidden = None
    num_blocks = len(plan.blocks)

    def call(segment, feeds: dict) -> list[np.ndarray]:
        rows.ran(segment.name, active)
        return ex.call(state, segment, feeds)

    def final(outputs: np.ndarray) -> list[Answer]:
        for j, r in enumerate(active):
            answers[r] = ex.final(outputs[j], num_blocks)
        return answers  # type: ignore[return-value]

    if not plan.first_stage_embeds(plan.exits):
        hidden = call(plan.embed, first)[0]
    for depth in range(1, num_blocks + 1):
        skipped = depth in plan.skip
        feeds = first if hidden is None else {"hidden": hidden, "attention_bias": bias[active]}
        if depth == num_blocks and plan.last_stage is not None and not skipped:
            return final(call(plan.last_stage, feeds)[0])
        hidden, _, exit_output = block_step(plan, call, depth, feeds, plan.exits)
        if exit_output is None:
            continue
        exit_head = plan.exits[depth].head
        staying = []
        for j, r in enumerate(active):
            confidence = exit_confidence(exit_head, exit_output[j], previous[r])
            previous[r] = exit_output[j]
            threshold = row_exits[r][depth].threshold if depth in row_exits[r] else None
            if should_exit(confidence, threshold):
                answers[r] = Answer(exit_output[j], confidence, depth)
            else:
                staying.append(j)
        if not staying:
            return answers  # type: ignore[return-value]
        active, hidden = active[staying], hidden[staying]
    return final(call(plan.head, {"hidden": hidden, "attention_bias": bias[active]})[0])
