"""A package summary for `edgeinfer inspect` (plain data, printed as text or JSON)."""

from __future__ import annotations

from ..errors import EdgeInferError
from ..manifest import Manifest, Segment
from .package import Package
from .encoder.plan import compile_plan
from .encoder.plan_record import plan_record
from .encoder.planner import choose_precision
from .policy import Budget, Policy


def describe_package(package: Package) -> dict:
    manifest = package.manifest
    sizes = {f.path: f.bytes for f in manifest.files}
    levels = [str(t.agreement) for t in manifest.exit_thresholds]
    exits = []
    for i, exit_head in enumerate(manifest.exits):
        exits.append({
            "after_block": exit_head.after_block,
            "segment": exit_head.segment,
            "confidence": exit_head.confidence,
            "levels": {str(t.agreement): {"threshold": t.thresholds[i], "share": t.exit_shares[i]}
                       for t in manifest.exit_thresholds},
        })
    return {
        "path": str(package.root),
        "kind": "whole model in one graph" if manifest.is_whole else "segmented",
        "why_no_exits": manifest.export.get("why") if manifest.is_whole else None,
        "guarantee": _guarantee(manifest.calibration.get("thresholds", {}), levels),
        "schema_version": manifest.schema_version,
        "total_bytes": sum(sizes.values()),
        "model": manifest.model.__dict__ | {"labels": list(manifest.model.labels or [])},
        "shared_weights_bytes": sum(b for p, b in sizes.items() if p.endswith(".bin")),
        "segments": [
            {"name": s.name, "kind": s.kind, "precisions": [v.precision for v in s.variants],
             "bytes": sum(sizes.get(v.path, 0) for v in s.variants)}
            for s in manifest.segments
        ],
        "exits": exits,
        "agreement_levels": levels,
        "length_ranges": {str(t.agreement): [{"max_tokens": r.max_tokens, "examples": r.examples,
                                              "thresholds": list(r.thresholds)} for r in t.by_length]
                          for t in manifest.exit_thresholds if t.by_length},
        "calibration_lengths": manifest.calibration.get("thresholds", {}).get("lengths"),
        "expected_mean_depth": {str(t.agreement): t.expected_mean_depth for t in manifest.exit_thresholds},
        "full_depth_share": {str(t.agreement): t.exit_shares[-1] for t in manifest.exit_thresholds},
        "precision_variants": [
            {"name": v.name, "bytes": v.bytes, "nodes_lowered": len(v.plan),
             "precisions": sorted(set(v.plan.values())), "quality": v.quality,
             "restart_share": {str(t.agreement): t.exit_shares[-1] for t in v.thresholds}}
            for v in manifest.precision_variants
        ],
        "default_policy": _default_policy(manifest),
        "plan": _default_plan(manifest),
        "served": _served(package),
        "operating_points": [{"name": p.name, "agreement": p.agreement, "relative_latency": p.relative_latency,
                              "mean_depth": p.mean_depth, "accuracy": p.accuracy} for p in manifest.operating_points],
        "litert": None if manifest.litert is None else {
            "files": manifest.litert.files, "buckets": list(manifest.litert.buckets),
            "segments": list(manifest.litert.segments),
            "bytes": sum(sizes.get(path, 0) for path in manifest.litert.files.values())},
        "validation": manifest.validation,
        "calibration": manifest.calibration,
        "evaluation": manifest.evaluation,
    }


def _served(package: Package) -> dict | None:
    """What the audited sessions of this package saw on this machine: requests, and how many had a
    length outside the calibration inputs' (the stated levels are not promised for those)."""
    from .encoder.audit_session import audit_states

    states = [state for _, state in audit_states(package)]
    if not states:
        return None
    return {"requests": sum(s.requests for s in states), "outside_calibration": sum(s.outside for s in states)}


def _guarantee(record: dict, levels: list[str]) -> str:
    """What the stated levels promise, from the calibration record."""
    if not levels:
        return "none: no exit answers early"
    stated = record.get("guarantee") if isinstance(record, dict) else None
    if not isinstance(stated, dict) or not stated:
        return ("none stated: these thresholds come from an earlier procedure; run `edgeinfer thresholds` "
                "to calibrate them with a guarantee")
    example = stated.get(levels[-1]) or next(iter(stated.values()))
    return f"for each level L, {str(example).replace(levels[-1], 'L', 1)} ({record.get('data', 'unknown data')})"


def _default_policy(manifest: Manifest) -> dict | None:
    """What load(package) runs with no policy given: the default level, at the precision whose
    calibrated cascade is expected to cost least (runtime/encoder/planner.py)."""
    if manifest.model.task == "text-generation" or not (manifest.exit_thresholds or manifest.is_whole):
        return None
    agreement = Policy().agreement
    first = next(s for s in manifest.segments if s.kind in ("embed", "whole"))
    onnx_precisions = {v.precision for v in first.variants}
    choice = choose_precision(manifest, agreement, lambda name: name in onnx_precisions)
    return {"agreement": agreement, "precision": choice.precision, "expected_cost": choice.expected_cost}


def _default_plan(manifest: Manifest) -> dict | None:
    """What load(package) runs on onnxruntime, step by step (segmented encoders: the others have one
    graph per step of their own loop, which `edgeinfer generate --json` traces)."""
    if manifest.is_whole or manifest.decoder is not None or not manifest.blocks():
        return None
    try:
        return plan_record(compile_plan(manifest, Policy(), Budget(), Segment.has_precision))
    except EdgeInferError as err:  # e.g. no level 0.99 stored: load() would refuse the default policy too
        return {"unavailable": str(err)}
