"""The steps a plan is made of, one small function each: call a graph, a block (or a stage with its
exit), an exit test, prune or merge, the deadline check, and the anytime answer when it trips.

They share one record per input run (RunState), private to a call so that threads never share it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...manifest import ExitHead, Segment
from ...targets.profile import Profile
from ..cost_model import LinearCost
from ..graph_runner import GraphRunner
from ..policy import classification_confidence, cosine
from ..pruning import keep_tokens
from .merging import merge_tokens
from .plan import ExitMap, Plan

Call = Callable[[Segment, dict], list[np.ndarray]]


@dataclass
class RunState:
    """What one input's run has done so far."""

    started: float
    precision: str = "fp32"
    segments: list[str] = field(default_factory=list)
    milliseconds: dict[str, float] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    restarts: int = 0
    predicted_ms: float = 0.0  # the device profile's prediction for the calls made


@dataclass(frozen=True)
class Answer:
    output: np.ndarray
    confidence: float | None
    depth: int  # blocks run before answering
    cut_short: bool = False
    hidden: np.ndarray | None = None  # the full model's own state after `depth` blocks, when resumable


@dataclass(frozen=True)
class StepCosts:
    """One block and one exit timed at load: what the deadline guard plans on without a profile."""

    block: LinearCost
    exit: LinearCost | None


def call_graph(runner: GraphRunner, profile: Profile | None, state: RunState, segment: Segment,
               feeds: dict[str, np.ndarray], priced_as: tuple[tuple[Segment, int], ...] = ()) -> list[np.ndarray]:
    """Run one graph and record it; priced_as: the segments (and their token counts) whose profiled
    costs predict this call, when the profile does not price the graph itself."""
    graph = runner.graph(segment, state.precision)
    inputs = {k: feeds[k] for k in segment.inputs}
    t0 = time.perf_counter()
    out = graph.run(None, inputs)
    state.milliseconds[segment.name] = (time.perf_counter() - t0) * 1000
    state.segments.append(segment.name)
    if profile is not None:
        batch, tokens = inputs[segment.inputs[0]].shape[:2]
        for piece, piece_tokens in priced_as or ((segment, tokens),):
            # a graph the profile lacks (probed before a variant was added) makes the whole prediction unknown
            state.predicted_ms += profile.predict_ms(piece.name, state.precision, piece_tokens, batch) or np.nan
    return out


def block_step(plan: Plan, call: Call, depth: int, feeds: dict, exits: ExitMap
               ) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray | None]:
    """Block `depth` and its exit where the run tests one: a single stage call when the package
    fused the two. Returns the next hidden state, the block's outputs (None when the block is
    skipped: the state passes unchanged) and the exit's output (None without an exit here)."""
    skipped = depth in plan.skip
    with_exit = depth in exits and depth < len(plan.blocks)
    stage = plan.stages.get(depth) if with_exit and not skipped else None
    outputs, exit_output = None, None
    if stage is not None:
        *outputs, exit_output = call(stage, feeds)
    elif not skipped:
        outputs = call(plan.blocks[depth - 1], feeds)
    hidden = outputs[0] if outputs is not None else feeds["hidden"]
    if with_exit and exit_output is None:
        exit_output = call(exits[depth].segment, {"hidden": hidden, "attention_bias": feeds["attention_bias"]})[0]
    return hidden, outputs, exit_output


def exit_confidence(exit_head: ExitHead, output: np.ndarray, previous: np.ndarray | None) -> float | None:
    """How sure an exit is: its top probability, or for embeddings its cosine to the exit before."""
    if exit_head.confidence == "max_prob":
        return classification_confidence(output)
    return cosine(output, previous) if previous is not None else None


def final_confidence(task: str, output: np.ndarray) -> float | None:
    return classification_confidence(output) if task == "text-classification" else None


def reduce_tokens(plan: Plan, hidden: np.ndarray, bias: np.ndarray, protected: np.ndarray,
                  outputs: list[np.ndarray] | None, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep `keep` tokens after a block: merge the rest into their nearest, or prune the least important."""
    if plan.policy.reduction == "merge":
        merged, merged_bias, protected = merge_tokens(hidden[0], bias[0], protected, keep)
        return merged[None], merged_bias[None], protected
    index = keep_tokens(outputs[plan.importance_output][0], protected, keep)
    return hidden[:, index], bias[:, index], protected[index]


def step_cost(plan: Plan, profile: Profile | None, costs: StepCosts | None, depth: int, tokens: int,
              exit_next: bool, precision: str) -> float | None:
    """Predicted p90 milliseconds of the next step, from the device profile, else from the block and
    exit timed at load."""
    if profile is not None:
        calls = plan.next_calls(depth, exit_next)
        predicted = [profile.predict_ms(s.name, precision, tokens, tail=True) for s in calls]
        if all(c is not None for c in predicted):
            return sum(predicted) + profile.overhead_per_call_ms * len(predicted)
    if costs is None:  # only without a latency budget, which measures costs at load
        return None
    cost = costs.block.predict(tokens)
    if exit_next and costs.exit is not None:
        cost += costs.exit.predict(tokens)
    return cost


def deadline_passes(plan: Plan, profile: Profile | None, costs: StepCosts | None, state: RunState,
                    depth: int, tokens: int, exit_next: bool) -> bool:
    """Would running the next block (and its exit) overrun the latency budget?"""
    cost = step_cost(plan, profile, costs, depth, tokens, exit_next, state.precision)
    if cost is None:
        return False
    return (time.perf_counter() - state.started) * 1000 + cost > plan.latency_ms


def anytime(plan: Plan, task: str, call: Call, hidden: np.ndarray, bias: np.ndarray, depth: int,
            best: Answer | None) -> Answer:
    """The deadline guard tripped after `depth` blocks: answer from the deepest exit reached, or from
    an exit head on the current state when none has run yet."""
    feeds = {"hidden": hidden, "attention_bias": bias}
    if best is None or best.depth < depth:
        exit_here = next((e for e in plan.every_exit if e.head.after_block == depth), None)
        if exit_here is not None:
            output = call(exit_here.segment, feeds)[0][0]
            best = Answer(output, exit_confidence(exit_here.head, output, None), depth)
    if best is None:  # no exit at or before this depth: the head is the only answer there is
        output = call(plan.head, feeds)[0][0]
        best = Answer(output, final_confidence(task, output), depth)
    return Answer(best.output, best.confidence, best.depth, cut_short=True)
