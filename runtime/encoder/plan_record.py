"""A plan as plain data and as lines: what `edgeinfer plan`, `inspect` and `run --json` print.

The steps listed are those an input of typical length walks; an input may leave at any exit test,
and the thresholds of its length range apply when the level has ranges.
"""

from __future__ import annotations

from typing import Any

from ...manifest import Segment
from ...targets.profile import Profile
from .plan import Plan

TYPICAL_TOKENS = 32  # the length costs are predicted at when the calibration recorded none


def plan_record(plan: Plan, profile: Profile | None = None, tokens: int | None = None) -> dict[str, Any]:
    """The plan as JSON-able data; with a device profile, each step's predicted milliseconds."""
    tokens = tokens or TYPICAL_TOKENS
    level = plan.level
    record: dict[str, Any] = {
        "mode": plan.mode,
        "precision": plan.precision,
        "precision_requested": plan.requested_precision,
        "expected_cost_by_precision": dict(plan.precision_choice.expected_cost) if plan.precision_choice else None,
        "agreement_requested": plan.policy.agreement,
        "level_in_force": level.agreement if level is not None else None,
        "latency_budget_ms": plan.latency_ms,
        "steps": _steps(plan),
        "restart": _restart(plan),
        "expected": None if level is None else {
            "mean_depth": level.expected_mean_depth,
            "shares": dict(zip(_share_names(plan), level.exit_shares)),
            "calibration_agreement": level.calibration_agreement},
        "graphs": [f"{segment.name}.{precision}" for segment, precision in plan.graphs_needed()],
    }
    if profile is not None:
        record["predicted_at_tokens"] = tokens
        for step in record["steps"]:
            costs = [profile.predict_ms(name, plan.precision, tokens) for name in step.get("graphs", [])]
            step["predicted_ms"] = round(sum(costs), 4) if costs and all(c is not None for c in costs) else None
    return record


def plan_lines(record: dict[str, Any]) -> list[str]:
    """The record in words, one step a line."""
    asked = record["agreement_requested"]
    level = (f"level {record['level_in_force']:g} in force (asked {asked:g})" if record["level_in_force"] is not None
             else "no exits (full depth)")
    lines = [f"plan       {record['mode']}, precision {record['precision']} (asked {record['precision_requested']}), "
             f"{level}" + (f", latency budget {record['latency_budget_ms']:g} ms" if record["latency_budget_ms"] else "")]
    costs = record["expected_cost_by_precision"]
    if costs and len(costs) > 1:
        lines.append("  precision auto chose by expected cost vs the fp32 full model, from calibration: "
                     + ", ".join(f"{name} {cost:.3f}x" for name, cost in costs.items()))
    for number, step in enumerate(record["steps"], start=1):
        predicted = f"  ~{step['predicted_ms']:.2f} ms" if step.get("predicted_ms") is not None else ""
        lines.append(f"  {number:>2}. {_step_words(step)}{predicted}")
    restart = record["restart"]
    if restart is not None:
        lines.append(f"  then: {restart['kind']} at {restart['precision']} ({restart['graph']}) when the answer's "
                     f"{restart['confidence']} is below {restart['below']:.4f}")
    expected = record["expected"]
    if expected is not None:
        shares = ", ".join(f"{name} {share:.1%}" for name, share in expected["shares"].items() if share)
        counted = " (a restart counts both passes, in this precision's blocks)" if restart is not None else ""
        lines.append(f"  expected from calibration: mean depth {expected['mean_depth']:.2f} blocks{counted}; {shares}")
    return lines


def _steps(plan: Plan) -> list[dict[str, Any]]:
    precision = plan.precision
    if plan.full is not None:
        return [{"kind": "full", "graphs": [plan.full.name], "precision": precision, "covers": "embed .. head"}]
    if plan.pruned_full is not None:
        return [{"kind": plan.policy.reduction, "graphs": [plan.pruned_full.name], "precision": precision,
                 "keep": {str(b): share for b, share in plan.keep.items()}, "ranks_by": plan.policy.importance}]
    steps: list[dict[str, Any]] = []
    if not plan.first_stage_embeds(plan.exits):
        steps.append({"kind": "embed", "graphs": [plan.embed.name], "precision": precision})
    num_blocks = len(plan.blocks)
    for depth in range(1, num_blocks + 1):
        if plan.latency_ms is not None and depth > 1:
            steps.append({"kind": "deadline check", "before_block": depth})
        calls = plan.next_calls(depth, depth in plan.exits)
        kind = "skip" if depth in plan.skip else "stage" if len(calls) == 1 and calls[0].kind == "span" else "block"
        steps.append({"kind": kind, "block": depth, "graphs": [s.name for s in calls], "precision": precision,
                      "covers": _covers(calls)})
        if depth in plan.exits and depth < num_blocks:
            step = plan.exits[depth]
            thresholds = [exits[depth].threshold if depth in exits else None for _, exits in plan.exits_by_length]
            steps.append({"kind": "exit test", "after_block": depth, "confidence": step.head.confidence,
                          "threshold": step.threshold if not plan.exits_by_length else None,
                          "threshold_by_length": {str(limit): t for (limit, _), t in zip(plan.exits_by_length, thresholds)}
                          or None})
        if depth in plan.keep:
            steps.append({"kind": plan.policy.reduction, "after_block": depth, "keep": plan.keep[depth]})
    return steps


def _covers(calls: list[Segment]) -> str:
    return ", ".join(", ".join(s.covers) if s.covers else s.name for s in calls)


def _restart(plan: Plan) -> dict[str, Any] | None:
    below = plan.restart_threshold if plan.restart_threshold is not None else plan.policy.restart_below
    if below is None or plan.full_span is None:
        return None
    graph = "the remaining blocks" if plan.resumable else plan.full_span.name  # a resume goes on from the exit
    return {"kind": "resume" if plan.resumable else "restart", "precision": "fp32", "graph": graph,
            "below": max(below, plan.policy.restart_below or 0.0), "confidence": "max_prob"}


def _share_names(plan: Plan) -> list[str]:
    names = [f"exit {e.head.after_block}" for e in plan.every_exit] + ["full depth"]
    return names + ["restart"] if plan.restart_threshold is not None else names


def _step_words(step: dict[str, Any]) -> str:
    kind = step["kind"]
    if kind == "exit test":
        threshold = step["threshold"]
        if threshold is None and step["threshold_by_length"]:
            by = ", ".join(f"{'longer' if k == 'None' else '<=' + k}: {'never' if v is None else f'{v:.4f}'}"
                           for k, v in step["threshold_by_length"].items())
            return f"exit test after block {step['after_block']}: {step['confidence']} at or above ({by})"
        return f"exit test after block {step['after_block']}: leave if {step['confidence']} >= {threshold:.4f}"
    if kind == "deadline check":
        return f"deadline check: answer from the best exit so far if block {step['before_block']} would overrun"
    if kind in ("prune", "merge") and "after_block" in step:
        return f"{kind} after block {step['after_block']}: keep {step['keep']:.0%} of the tokens"
    graphs = ", ".join(step["graphs"])
    what = f" ({step['covers']})" if step.get("covers") else ""
    return f"{kind:<6} {graphs} [{step['precision']}]{what}"
