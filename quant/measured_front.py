"""A few plans measured as they really run: latency beside fp32 on this device, and closeness to fp32.

The search ranks plans by a prediction (node latencies summed, node errors summed). quant.md shows
what that prediction is worth: fp32, uniform int8, the chosen plan and a few points of the latency
front between them, each lowered whole, timed in alternating rounds with the fp32 graph (so drift
falls on both), and run on the calibration texts. A user sees which point dominates, and how far
predicted latency sits from measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..export.exit_quality import cosine_rows
from ..manifest import Manifest
from .apply_plan import apply_plan
from .mixed_precision import Analysis, fronts, uniform_plan
from .model_latency import paired_latency_ms
from .output_error import CalibrationBatches, model_outputs, output_error
from .weight_nodes import weight_nodes

FRONT_POINTS = 3  # latency-front plans measured besides fp32, uniform int8 and the chosen one
MEASURED_TEXTS = 512


@dataclass(frozen=True)
class MeasuredPlan:
    name: str
    plan: dict[str, str]
    predicted_ms: float
    fp32_predicted_ms: float
    measured_ms: float
    fp32_ms: float  # the fp32 graph, timed in the same rounds
    output_error: float
    agreement_with_fp32: float | None  # classifiers: same label
    mean_cosine_to_fp32: float | None  # embeddings

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.measured_ms

    @property
    def prediction_error(self) -> float:
        """The predicted latency relative to fp32's over the measured one, minus one (both as
        ratios to fp32, so the machine's drift between planning and measuring cancels)."""
        return (self.predicted_ms / self.fp32_predicted_ms) / (self.measured_ms / self.fp32_ms) - 1.0


def measured_front(analysis: Analysis, model: onnx.ModelProto, manifest: Manifest, batches: CalibrationBatches,
                   chosen: dict[str, str]) -> list[MeasuredPlan]:
    plans = {"fp32": {}, "uniform int8": uniform_plan(analysis, "int8"), "predicted best": chosen}
    front = fronts(analysis, "latency", for_speed=True)["dp"]
    step = max(1, len(front) // (FRONT_POINTS + 1))
    for index, plan in enumerate(front[step::step][:FRONT_POINTS], start=1):
        plans[f"front {index}"] = plan.as_dict()
    feeds, count = [], 0
    for feed in batches.feeds:  # the first few hundred texts are plenty for a closeness figure
        feeds.append(feed)
        count += len(feed["input_ids"])
        if count >= MEASURED_TEXTS:
            break
    reference = batches.reference[:count]
    fp32_bytes = model.SerializeToString()
    fp32_predicted = analysis.predicted({})[1]
    digests = {n.name: n.digest for n in weight_nodes(model)}
    classifier = manifest.model.task == "text-classification"
    measured = []
    for name, plan in plans.items():
        by_digest = {digests[node]: p for node, p in plan.items()}
        lowered = apply_plan(model, by_digest, analysis.smoothing).SerializeToString() if plan else fp32_bytes
        fp32_ms, plan_ms = paired_latency_ms(fp32_bytes, lowered, manifest)
        outputs = model_outputs(lowered, tuple(feeds))
        measured.append(MeasuredPlan(
            name, plan, analysis.predicted(plan)[1], fp32_predicted, plan_ms, fp32_ms,
            output_error(manifest.model.task, reference, outputs),
            float(np.mean(outputs.argmax(-1) == reference.argmax(-1))) if classifier else None,
            None if classifier else float(np.mean(cosine_rows(outputs, reference)))))
    return measured


def fastest_measured(measured: list[MeasuredPlan]) -> MeasuredPlan:
    """The plan that ran fastest here among those no less faithful than uniform int8 (measured,
    fp32 itself aside): the prediction ranks the candidates, the measurement decides."""
    reference = next(m for m in measured if m.name == "uniform int8")
    fitting = [m for m in measured if m.name != "fp32" and m.output_error <= reference.output_error * (1 + 1e-9)]
    return min(fitting, key=lambda m: m.measured_ms / m.fp32_ms)
