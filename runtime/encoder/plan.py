"""What a session will do, decided once at load: the plan.

A policy, a budget and the graphs a package holds compile into an immutable Plan: the precision runs
start at, the thresholds of the level in force, which graph each step calls, when a run may restart,
and what the calibration expects it to cost. Nothing here runs a graph, so a plan can be printed
(`edgeinfer plan`, `inspect`, `run --json`) and tested on its own; executor.py walks it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

from ...errors import InputError
from ...manifest import ExitHead, ExitThresholds, LengthThresholds, Manifest, Segment
from ..policy import AUTO_PRECISION, Budget, Policy, stored_level, variant_level
from .planner import PrecisionChoice, choose_precision

HasGraph = Callable[[Segment, str], bool]  # does the backend have this segment at this precision?


class ExitStep(NamedTuple):
    head: ExitHead
    segment: Segment
    threshold: float | None


ExitMap = Mapping[int, ExitStep]  # by the block each exit follows


@dataclass(frozen=True)
class Plan:
    policy: Policy  # as it runs: precision "auto" resolved
    requested_precision: str
    precision_choice: PrecisionChoice | None  # with precision "auto": what was compared, and what won
    precision: str  # where runs start
    level: ExitThresholds | None  # the stored level in force (None: exits off)
    restart_threshold: float | None  # a variant's final answer below this restarts at fp32
    exits: ExitMap  # every exit some input may take at this level
    exits_by_length: tuple[tuple[int | None, ExitMap], ...]  # per length range, when the level has ranges
    every_exit: tuple[ExitStep, ...]  # the package's exits, whatever the level (a deadline may answer from any)
    keep: Mapping[int, float]  # tokens kept after a block: a share
    skip: frozenset[int]
    resumable: bool  # an exit's state is the full model's own, so a restart continues from it
    embed: Segment
    blocks: tuple[Segment, ...]
    head: Segment
    full: Segment | None  # one fused graph: nothing to decide between embed and head
    pruned_full: Segment | None  # one graph that prunes inside: pruning and nothing else
    full_span: Segment | None  # the fp32 full model a restart runs
    stages: Mapping[int, Segment]  # block + exit fused (the first with the embedding)
    last_stage: Segment | None  # the last block with the head
    importance_output: int  # which block output ranks tokens for pruning
    latency_ms: float | None

    @property
    def mode(self) -> str:
        return "fused" if self.full is not None else "pruned" if self.pruned_full is not None else "adaptive"

    def exits_for(self, tokens: int) -> ExitMap:
        """The exits, with their thresholds, for an input of this many tokens."""
        for limit, exits in self.exits_by_length:
            if limit is None or tokens <= limit:
                return exits
        return self.exits

    def restart_threshold_for(self, tokens: int) -> float | None:
        """A precision variant's restart threshold for an input of this many tokens."""
        if self.restart_threshold is None or not self.level.by_length:
            return self.restart_threshold
        return self.level.for_tokens(tokens)[-1]

    def variant_cannot_answer(self, tokens: int) -> bool:
        """In a length range where calibration found no restart threshold for the variant, every
        variant answer would be redone at fp32: such inputs start at fp32 instead."""
        return self.restart_threshold is not None and self.restart_threshold_for(tokens) is None

    def next_calls(self, depth: int, exit_next: bool) -> list[Segment]:
        """The graphs the step to `depth` blocks calls (the last block brings the head)."""
        last = depth == len(self.blocks)
        if depth in self.skip:
            return [self.head] if last else [self.exits[depth].segment] if exit_next and depth in self.exits else []
        if last:
            return [self.last_stage] if self.last_stage is not None else [self.blocks[-1], self.head]
        if exit_next and depth in self.exits:
            stage = self.stages.get(depth)
            return [stage] if stage is not None else [self.blocks[depth - 1], self.exits[depth].segment]
        return [self.blocks[depth - 1]]

    def first_stage_embeds(self, exits: ExitMap) -> bool:
        """Does the first call embed too (a stage over embed, block 1 and its exit)?"""
        return 1 in exits and 1 in self.stages and 1 not in self.skip

    def graphs_needed(self) -> list[tuple[Segment, str]]:
        """Every graph (and precision) this plan may call: the memory check counts them, and a
        deadline opens them up front. Only these: each onnxruntime session holds its own copy of its
        weights, so opening stage spans and the blocks they cover would double the memory."""
        if self.full is not None:
            return [(self.full, self.precision)]
        if self.pruned_full is not None:
            needed = [self.pruned_full]
        else:
            needed = [] if self.first_stage_embeds(self.exits) else [self.embed]
            for depth in range(1, len(self.blocks) + 1):
                needed += self.next_calls(depth, depth in self.exits)
        if self.latency_ms is not None:  # a cut-short run answers from an exit head, or the head
            needed += [step.segment for step in self.every_exit] + [self.head]
        graphs = [(s, self.precision) for s in {s.name: s for s in needed}.values()]
        if self.restarts and self.full_span is not None:
            graphs.append((self.full_span, "fp32"))
        return graphs

    @property
    def restarts(self) -> bool:
        return self.precision != "fp32" or self.policy.restart_below is not None

    def with_level(self, manifest: Manifest, level: ExitThresholds | None, restart_threshold: float | None,
                   precision: str) -> "Plan":
        """The same plan at another level (the audit's moves, and tests that plant a level)."""
        exits, by_length = _exits_at_level(manifest, level)
        return replace(self, level=level, restart_threshold=restart_threshold, precision=precision,
                       exits=exits, exits_by_length=by_length)


def compile_plan(manifest: Manifest, policy: Policy, budget: Budget, has: HasGraph,
                 backend: str = "onnxruntime") -> Plan:
    """The plan of a policy on this package, or one line on what in the policy cannot run here."""
    blocks = manifest.blocks()
    embed = next(s for s in manifest.segments if s.kind == "embed")
    head = next(s for s in manifest.segments if s.kind == "head")
    requested, choice = policy.precision, None
    if policy.precision == AUTO_PRECISION:
        plain = not policy.keep_schedule and not policy.skip_blocks and policy.restart_below is None
        choice = choose_precision(manifest, policy.agreement if plain else None, lambda name: has(embed, name))
        policy = replace(policy, precision=choice.precision)
    if policy.precision != "fp32":
        manifest.precision_variant(policy.precision)  # an unknown name: one line listing the known ones
    if not has(embed, policy.precision):
        raise InputError(f"this package has no {backend} graphs at precision {policy.precision!r}; "
                         f"run it on another target or precision")
    precision, level, restart = levels(manifest, policy)
    keep, skip = dict(policy.keep_schedule), frozenset(policy.skip_blocks)
    _check_schedule(policy, len(blocks), keep, skip)
    exits, by_length = _exits_at_level(manifest, level)
    no_decisions = not exits and not keep and not skip and budget.latency_ms is None \
        and policy.restart_below is None and restart is None
    runnable = _runnable(has, precision)
    full_span = runnable(manifest.span_covering(("embed", *(b.name for b in blocks), "head")))
    prunes_only = keep and not exits and not skip and budget.latency_ms is None and policy.reduction == "prune"
    if policy.importance not in blocks[0].outputs:
        raise InputError(f"this package's blocks do not output {policy.importance!r} "
                         f"(they give {list(blocks[0].outputs[1:])}); re-export it or pick one of those")
    return Plan(policy=policy, requested_precision=requested, precision_choice=choice, precision=precision,
                level=level, restart_threshold=restart, exits=exits, exits_by_length=by_length,
                every_exit=tuple(ExitStep(e, manifest.segment(e.segment), None) for e in manifest.exits),
                keep=MappingProxyType(keep), skip=skip,
                resumable=precision == "fp32" and not keep and not skip,  # at fp32, every token, every block
                embed=embed, blocks=blocks, head=head,
                full=full_span if no_decisions else None,
                pruned_full=runnable(manifest.pruning_span(policy.importance)) if prunes_only else None,
                full_span=full_span,
                stages=MappingProxyType(_find_stages(manifest, blocks, policy, precision, keep, has)),
                last_stage=runnable(manifest.span_covering((blocks[-1].name, head.name))),
                importance_output=blocks[0].outputs.index(policy.importance), latency_ms=budget.latency_ms)


def levels(manifest: Manifest, policy: Policy) -> tuple[str, ExitThresholds | None, float | None]:
    """(precision to start at, its calibrated thresholds, its restart threshold).

    A variant's last threshold guards its final answer. Where calibration found none that holds
    the level, every variant answer would restart: the policy's fallback refuses that, or runs
    fp32 and says so (docs/runtime.md, "What runs when the package cannot do what was asked").
    """
    if policy.agreement is None:
        return policy.precision, None, None
    if policy.precision == "fp32":
        return "fp32", stored_level(manifest.exit_thresholds, policy.agreement, policy.fallback), None
    level = variant_level(manifest, policy.precision, policy.agreement, policy.fallback)
    if level is None:
        return "fp32", stored_level(manifest.exit_thresholds, policy.agreement, policy.fallback), None
    ranges = level.ranges
    unanswered = [r for r in ranges if r.thresholds[-1] is None]
    if unanswered:
        warnings.warn(f"precision {policy.precision!r} certifies no answer at agreement {level.agreement:g} for inputs "
                      f"of {_length_ranges(ranges, unanswered)} tokens: those start at fp32 "
                      f"(trace.precision says so)", UserWarning, stacklevel=4)
    if manifest.model.task != "text-classification":
        return policy.precision, level, None  # an embedding variant's level keeps every answer: nothing restarts
    restart = max(r.thresholds[-1] for r in ranges if r.thresholds[-1] is not None)
    return policy.precision, level, restart


def _check_schedule(policy: Policy, num_blocks: int, keep: dict[int, float], skip: frozenset[int]) -> None:
    if any(b > num_blocks for b in skip) or len(skip) >= num_blocks:
        raise InputError(f"skip_blocks {policy.skip_blocks} must name some, not all, of blocks 1..{num_blocks}")
    if skip & set(keep):
        raise InputError(f"keep_schedule prunes after skipped blocks {sorted(skip & set(keep))}, "
                         f"which produce no token scores; prune after a block that runs")
    bad = [b for b in keep if b >= num_blocks]
    if bad:
        raise InputError(f"keep_schedule prunes after blocks {bad}, but the model has {num_blocks} "
                         f"blocks; prune after blocks 1..{num_blocks - 1}")


def _runnable(has: HasGraph, precision: str) -> Callable[[Segment | None], Segment | None]:
    """The segment, if there is one and the backend has it at this precision."""
    return lambda segment: segment if segment is not None and has(segment, precision) else None


def _exits_at_level(manifest: Manifest, level: ExitThresholds | None) -> tuple[ExitMap, tuple[tuple[int | None, ExitMap], ...]]:
    """(every exit some input may take at this level, and per length range the exits with that
    range's thresholds; empty when the level has one set for all lengths)."""
    if level is None:
        return MappingProxyType({}), ()
    if not level.by_length:
        return _active_exits(manifest, level.thresholds), ()
    by_length = tuple((r.max_tokens, _active_exits(manifest, r.thresholds)) for r in level.by_length)
    union: dict[int, ExitStep] = {}
    for _, exits in by_length:
        union.update({k: v for k, v in exits.items() if k not in union})
    return MappingProxyType(union), by_length


def _active_exits(manifest: Manifest, thresholds: tuple[float | None, ...]) -> ExitMap:
    """Exits worth running with these thresholds: those with one, and for embeddings the exit
    before each of them (their confidence compares consecutive exits)."""
    active: dict[int, ExitStep] = {}
    for i, exit_head in enumerate(manifest.exits):
        threshold = thresholds[i]
        if threshold is None:
            continue
        active[exit_head.after_block] = ExitStep(exit_head, manifest.segment(exit_head.segment), threshold)
        if exit_head.confidence == "consecutive_cosine" and i > 0:
            before = manifest.exits[i - 1]
            active.setdefault(before.after_block, ExitStep(before, manifest.segment(before.segment), thresholds[i - 1]))
    return MappingProxyType(active)


def _find_stages(manifest: Manifest, blocks: tuple[Segment, ...], policy: Policy, precision: str,
                 keep: dict[int, float], has: HasGraph) -> dict[int, Segment]:
    """Spans that run a block with its exit (the first with the embedding): one call per decision
    instead of two (packages before schema 1.3 have none). Where the policy does not prune or merge
    after a stage, its lean form (no token scores, schema 1.6) serves: the scores cost 5-10% of an
    int8 stage even when nobody reads them."""
    stages = {}
    for exit_head in manifest.exits:
        depth = exit_head.after_block
        covers = (*(("embed",) if depth == 1 else ()), blocks[depth - 1].name, exit_head.segment)
        runnable = [s for s in manifest.spans_covering(covers) if has(s, precision)]
        if depth in keep and policy.reduction != "merge":  # merging reads only the state
            runnable = [s for s in runnable if policy.importance in s.outputs]
        if runnable:
            stages[depth] = min(runnable, key=lambda s: len(s.outputs))
    return stages


def _length_ranges(ranges: tuple[LengthThresholds, ...], chosen: list[LengthThresholds]) -> str:
    """'1-16, 65-128' for the chosen ranges (each range runs from its predecessor's limit + 1)."""
    spans, low = [], 1
    for r in ranges:
        if r in chosen:
            spans.append(f"{low}-{r.max_tokens}" if r.max_tokens is not None else f"{low} or more")
        low = (r.max_tokens or 0) + 1
    return ", ".join(spans)
