"""`edgeinfer quantize`: analyse a package, choose a plan for the budget, write it as a variant."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import InputError
from ..manifest import Manifest
from ..runtime.package import Package, open_package
from .mixed_precision import QUANT_MODES, PLAN_TOKENS, Analysis, analyse, choose_plan, full_model
from .candidates import candidate
from .apply_plan import apply_plan
from .measured_front import MeasuredPlan, fastest_measured, measured_front
from .model_latency import fp32_latency_ms, paired_latency_ms
from .output_error import CalibrationBatches, calibration_batches
from .package_variants import add_precision_variant
from .smoothing import NONE, Smoothing
from .weight_nodes import WeightNode, weight_nodes

SENSITIVITY_MODES = ("proxy", "measured")
ANALYSIS_TEXTS = 512  # node statistics settle long before thresholds do
THRESHOLD_TEXTS = 3000  # as export: enough for a 0.99 level's Clopper-Pearson bound


@dataclass(frozen=True)
class QuantizeResult:
    manifest: Manifest
    analysis: Analysis
    plan: dict[str, str]
    predicted: tuple[int, float, float]  # bytes, latency ms at PLAN_TOKENS, additive error
    batches: CalibrationBatches
    measured: tuple[MeasuredPlan, ...] = ()  # mixed: plans measured as they run (measured_front.py)


def quantize_package(package_path: Path, texts: list[str], mode: str = "mixed", output: Path | None = None,
                     name: str | None = None, size_budget_mb: float | None = None,
                     latency_budget_ms: float | None = None, sensitivity: str = "proxy",
                     force: bool = False, overrides: dict[str, str] | None = None) -> QuantizeResult:
    """overrides: node name -> precision, forced after the search (e.g. keep a node fp32)."""
    if sensitivity not in SENSITIVITY_MODES:
        raise InputError(f"sensitivity {sensitivity!r} must be one of {', '.join(SENSITIVITY_MODES)}")
    if mode not in QUANT_MODES or mode == "none":  # before minutes of analysis, not after
        raise InputError(f"quant mode {mode!r} must be one of {', '.join(QUANT_MODES[1:])} for this package")
    package = open_package(package_path)
    if package.manifest.decoder is not None:
        raise InputError(f"{package_path} is a text-generation package: quantize it with --quant q8 (or q4, int8)")
    if len(texts) > THRESHOLD_TEXTS:
        texts = random.Random(0).sample(texts, THRESHOLD_TEXTS)
    model = full_model(package)  # loaded once: it is the analysed model and the thresholds' reference
    check_overrides(weight_nodes(model), overrides or {})  # bad input fails before any work
    result, batches = analyse(package, texts[:ANALYSIS_TEXTS], sensitivity,
                              model_latency_ms=fp32_latency_ms(package.root, package.manifest), model=model)
    if len(texts) > len(batches.reference):
        batches = calibration_batches(package, model, texts)
    plan = {**choose_plan(result, mode, size_budget_mb, latency_budget_ms), **(overrides or {})}
    measured = tuple(measured_front(result, model, package.manifest, batches, plan)) if mode == "mixed" else ()
    chosen = next((m for m in measured if m.name == "predicted best"), None)
    if measured and size_budget_mb is None and latency_budget_ms is None and not overrides:
        chosen = fastest_measured(list(measured))  # mixed for speed: what ran fastest, not what was predicted to
        plan = chosen.plan
    predicted = result.predicted(plan)
    fp32 = result.predicted({})
    expected = predicted_speedup(fp32[1], predicted[1])
    record = {"mode": mode, "sensitivity": sensitivity, "smoothing_alpha": result.smoothing.alpha,
              "size_budget_mb": size_budget_mb, "latency_budget_ms": latency_budget_ms,
              "predicted_bytes": int(predicted[0]), "predicted_latency_ms": round(predicted[1], 4),
              "predicted_at_tokens": PLAN_TOKENS, "predicted_error": predicted[2],
              **({"measured_choice": chosen.name} if chosen is not None else {}),
              **(measured_speed(package, model, plan, expected, result.smoothing) if chosen is None
                 else speed_record(chosen.fp32_ms, chosen.measured_ms, expected))}
    manifest = add_precision_variant(package, output or package.root, name or _default_name(mode, predicted[0]),
                                     plan, batches, record["speedup_measured"], record, force, result.smoothing)
    return QuantizeResult(manifest, result, plan, predicted, batches, measured)


def predicted_speedup(fp32_ms: float, plan_ms: float) -> float | None:
    """fp32's predicted latency over the plan's; None where that is no prediction at all: on a tiny
    model, node timings inside the timer's noise can scale the plan's total to zero or below, and a
    ratio outside 1/1000..1000 would be written into a manifest its reader refuses."""
    if fp32_ms <= 0 or plan_ms <= 0:
        return None
    ratio = fp32_ms / plan_ms
    return ratio if 1e-3 <= ratio <= 1e3 else None


def measured_speed(package: Package, model: onnx.ModelProto, plan: dict[str, str], predicted_speedup: float | None,
                   smoothing: Smoothing = NONE) -> dict:
    """The written variant's full-depth latency beside fp32's, measured in alternating rounds: what
    the runtime's choice of precision relies on, and the check on the plan's prediction."""
    by_digest = {n.digest: plan.get(n.name, "fp32") for n in weight_nodes(model)}
    fp32_ms, variant_ms = paired_latency_ms(model.SerializeToString(), apply_plan(model, by_digest, smoothing).SerializeToString(),
                                            package.manifest)
    return speed_record(fp32_ms, variant_ms, predicted_speedup)


def speed_record(fp32_ms: float, variant_ms: float, predicted_speedup: float | None) -> dict:
    speedup = fp32_ms / max(variant_ms, 1e-9)
    return {"fp32_latency_ms": round(fp32_ms, 4), "measured_latency_ms": round(variant_ms, 4),
            "speedup_measured": round(speedup, 4),
            "speedup_predicted": None if predicted_speedup is None else round(predicted_speedup, 4),
            "speedup_prediction_error": None if predicted_speedup is None else round(predicted_speedup / speedup - 1.0, 4)}


def check_overrides(weight_nodes_of_model: list[WeightNode], overrides: dict[str, str]) -> None:
    nodes = {n.name: n for n in weight_nodes_of_model}
    for name, precision in overrides.items():
        if name not in nodes:
            close = [n for n in nodes if name.split("/")[-1] in n][:3] or list(nodes)[:3]
            raise InputError(f"override names node {name!r}, which this model does not have; nodes look like "
                             f"{close} (see the plan table of `edgeinfer quantize --report`)")
        if nodes[name].op_type not in candidate(precision).ops:
            raise InputError(f"override {name}={precision}: {precision} cannot lower a {nodes[name].op_type} node")


def _default_name(mode: str, bytes_: int) -> str:
    return mode if mode != "mixed" else f"mixed-{max(1, round(bytes_ / 1e6))}mb"
