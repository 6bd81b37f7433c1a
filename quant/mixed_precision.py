"""From a package to a precision plan: analyse every weight node, then choose for a budget.

analyse(): node list, bytes and measured latency per node and candidate, and the error of each
(measured sensitivity, or the value-driven proxy scaled by block gains). choose_plan(): a uniform
plan (int8, int4, fp16) or the searched mixed plan for a size or latency budget. Plans are keyed
by weight digest so they apply to every graph of the package (weight_nodes.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from ..errors import InputError
from ..runtime.package import Package
from .candidates import CANDIDATES, Candidate, for_op
from .apply_plan import apply_plan
from .model_latency import PLAN_TOKENS, full_graph_latency_ms
from .node_latency import node_latencies
from .output_error import CalibrationBatches, calibration_batches, single_texts
from .propagation import block_gains, gain_of
from .search import Option, Plan, dp_front, greedy_front, pareto, plan_for_budget
from .sensitivity import measure_sensitivity
from .smoothing import ALPHAS, NONE, Smoothing, channel_peaks, smoothing_for
from .value_stats import ValueStats, activation_stats, proxy_error
from .weight_nodes import WeightNode, weight_nodes

QUANT_MODES = ("none", "int8", "int4", "fp16", "mixed")
UNIFORM = {"int8": "int8-channel", "int4": "int4-b32", "fp16": "fp16"}
MIN_CALIBRATION_TEXTS = 32
SPEED_CANDIDATES = ("fp32", "int8-channel", "int8-tensor")  # what a plan for speed starts from
CLEARLY_FASTER = 0.95  # another candidate joins a plan for speed where it times this far under int8


@dataclass(frozen=True)
class Analysis:
    nodes: tuple[WeightNode, ...]
    bytes: dict[tuple[str, str], int]
    latency_ms: dict[tuple[str, str], float]
    proxy: dict[tuple[str, str], float]
    measured: dict[tuple[str, str], float] | None
    stats: dict[str, ValueStats]
    gains: tuple[float, ...]
    other_bytes: int  # weights outside the analysed nodes (norms, biases)
    other_latency_ms: float  # the graph's time outside the analysed nodes, at PLAN_TOKENS
    seconds: dict[str, float] = field(default_factory=dict)
    latency_scales: dict[str, float] = field(default_factory=dict)  # see calibrated_latencies
    smoothing: Smoothing = NONE  # what every int8 node of a plan takes (smoothing.py)

    def error(self, key: tuple[str, str]) -> float:
        if key[1] == "fp32":
            return 0.0
        return (self.measured or self.proxy)[key]

    def options(self, cost: str, for_speed: bool = False) -> dict[str, list[Option]]:
        """for_speed: a candidate that saves bytes but not time (fp16 storage, int4 here) takes part
        only where this device timed it clearly faster than int8 on that node."""
        table = self.bytes if cost == "bytes" else self.latency_ms
        scale = 1e-6 if cost == "bytes" else 1.0  # searched in MB and ms
        allowed = {}
        for node in self.nodes:
            allowed[node.name] = [Option(c.name, scale * table[(node.name, c.name)], self.error((node.name, c.name)))
                                  for c in CANDIDATES if (node.name, c.name) in table
                                  and not (c.bits < 8 and self.stats.get(node.name) is not None
                                           and self.stats[node.name].has_outliers)
                                  and not (for_speed and not self._pays_for_speed(node.name, c.name))]
        return allowed

    def _pays_for_speed(self, node: str, candidate: str) -> bool:
        if candidate in SPEED_CANDIDATES or (node, "int8-channel") not in self.latency_ms:
            return True
        return self.latency_ms[(node, candidate)] < CLEARLY_FASTER * self.latency_ms[(node, "int8-channel")]

    def by_digest(self, plan: Plan) -> dict[str, str]:
        names = {n.name: n.digest for n in self.nodes}
        return {names[node]: candidate for node, candidate in plan.assignment}

    def predicted(self, assignment: dict[str, str]) -> tuple[int, float, float]:
        """(bytes, latency ms, additive error) of a plan given by node name."""
        keys = [(n.name, assignment.get(n.name, "fp32")) for n in self.nodes]
        return (self.other_bytes + sum(self.bytes[k] for k in keys),
                self.other_latency_ms + sum(self.latency_ms[k] for k in keys), sum(self.error(k) for k in keys))


def full_model(package: Package) -> onnx.ModelProto:
    manifest = package.manifest
    span = manifest.full_depth()
    if span is None:
        raise InputError("this package has no full-depth graph (schema 1.0); re-export it to quantize it")
    return onnx.load(str(package.path(span.graph("fp32"))))


def analyse(package: Package, texts: list[str], sensitivity: str = "proxy",
            candidates: tuple[Candidate, ...] = CANDIDATES, model_latency_ms: float | None = None,
            model: onnx.ModelProto | None = None) -> tuple[Analysis, CalibrationBatches]:
    """model: the package's full-depth graph, when the caller has loaded it already."""
    if len(texts) < MIN_CALIBRATION_TEXTS:
        raise InputError(f"the calibration data has {len(texts)} texts; quantization needs at least "
                         f"{MIN_CALIBRATION_TEXTS} (a few hundred give steadier plans)")
    model = model if model is not None else full_model(package)
    batches = calibration_batches(package, model, texts)
    nodes = weight_nodes(model)
    seconds = {}
    start = time.perf_counter()
    smoothing = choose_smoothing(model, nodes, batches)
    seconds["smoothing"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    stats = activation_stats(model, nodes, batches.feeds, smoothing)
    gains = block_gains(package, batches.feeds, batches.reference)
    proxy = {(n.name, c.name): proxy_error(model, n, c, stats, smoothing) * gain_of(n.name, gains)
             for n in nodes for c in candidates if c.bits < 32 and n.op_type in c.ops}
    seconds["proxy"] = round(time.perf_counter() - start, 2)
    measured = None
    if sensitivity == "measured":
        start = time.perf_counter()
        measured = measure_sensitivity(model, nodes, candidates, batches.error, smoothing)
        seconds["measured"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    latency = node_latencies(nodes, list(candidates), PLAN_TOKENS)
    scales = {}
    if model_latency_ms is not None:
        latency, scales = calibrated_latencies(package, model, nodes, candidates, latency, model_latency_ms,
                                               smoothing)
    seconds["latency"] = round(time.perf_counter() - start, 2)
    sizes = {(n.name, c.name): c.weight_bytes(n.shape) for n in nodes for c in candidates if n.op_type in c.ops}
    analysed = {n.weight for n in nodes}
    other_bytes = sum(_tensor_bytes(t) for t in model.graph.initializer if t.name not in analysed)
    fp32_nodes_ms = sum(latency[(n.name, "fp32")] for n in nodes)
    other_ms = max((model_latency_ms or fp32_nodes_ms) - fp32_nodes_ms, 0.0)
    return Analysis(tuple(nodes), sizes, latency, proxy, measured, stats, tuple(gains), other_bytes, other_ms,
                    seconds, scales, smoothing), batches


SMOOTHING_TEXTS = 256  # the alpha's choice settles on a few hundred texts


def choose_smoothing(model: onnx.ModelProto, nodes: list[WeightNode], batches: CalibrationBatches) -> Smoothing:
    """The alpha (or none) whose uniform int8 plan is closest to fp32 on calibration texts, each run
    alone as a request runs: dynamic int8 takes one range per tensor, and over a padded batch of 32
    texts that range is the widest text's (on all-MiniLM-L6-v2 it hid a halving of the error)."""
    subset = single_texts(batches, SMOOTHING_TEXTS)
    int8 = {n.digest: for_op("int8-channel", n.op_type) for n in nodes}
    peaks = channel_peaks(model, nodes, subset.feeds)
    choices = [NONE, *(smoothing_for(model, nodes, peaks, alpha) for alpha in ALPHAS)]
    return min(choices, key=lambda smoothing: subset.error(apply_plan(model, int8, smoothing)))


def calibrated_latencies(package: Package, model: onnx.ModelProto, nodes: list[WeightNode],
                         candidates: tuple[Candidate, ...], latency: dict[tuple[str, str], float],
                         model_latency_ms: float, smoothing: Smoothing = NONE
                         ) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """Scale each candidate's per-node time savings so the whole model lowered to it matches a measurement.

    Nodes timed alone miss what the lowered model shares: q, k and v read one input, which int8
    dynamic quantizes once in the model but three times alone. Measured on MiniLM, the raw sums
    over-predicted uniform int8 by 12% and int4 by 15%; one lowered model per candidate fixes the
    scale (the planner's "cost scaled by one measured calibration run").
    """
    adjusted, scales = dict(latency), {}
    for candidate in candidates:
        if candidate.bits == 32:
            continue
        lowered = [n for n in nodes if n.op_type in candidate.ops]
        saved = sum(latency[(n.name, "fp32")] - latency[(n.name, candidate.name)] for n in lowered)
        plan = {n.digest: candidate.name for n in lowered}
        measured = full_graph_latency_ms(apply_plan(model, plan, smoothing).SerializeToString(), package.manifest,
                                         PLAN_TOKENS)
        scale = (model_latency_ms - measured) / saved if abs(saved) > 1e-6 else 1.0
        scales[candidate.name] = round(scale, 4)
        for n in lowered:
            fp32 = latency[(n.name, "fp32")]
            adjusted[(n.name, candidate.name)] = fp32 - scale * (fp32 - latency[(n.name, candidate.name)])
    return adjusted, scales


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT64: 8}.get(tensor.data_type, 4)


def uniform_plan(analysis: Analysis, mode: str) -> dict[str, str]:
    """Every node at one precision (int4 nodes without an int4 kernel, e.g. Gemm, take int8)."""
    return {n.name: for_op(UNIFORM[mode], n.op_type) for n in analysis.nodes}


def fronts(analysis: Analysis, cost: str, for_speed: bool = False) -> dict[str, list[Plan]]:
    fixed = analysis.other_bytes * 1e-6 if cost == "bytes" else analysis.other_latency_ms
    options = analysis.options(cost, for_speed)
    return {"greedy": pareto(greedy_front(options, fixed)), "dp": dp_front(options, fixed)}


def choose_plan(analysis: Analysis, mode: str, size_budget_mb: float | None = None,
                latency_budget_ms: float | None = None) -> dict[str, str]:
    """A plan by node name for the mode and budget (mixed without a budget: fastest_within_int8_error)."""
    if mode not in QUANT_MODES or mode == "none":
        raise InputError(f"quant mode {mode!r} must be one of {', '.join(QUANT_MODES[1:])}")
    if mode != "mixed":
        if size_budget_mb is not None or latency_budget_ms is not None:
            raise InputError(f"a size or latency budget needs --quant mixed, not {mode}")
        return uniform_plan(analysis, mode)
    if latency_budget_ms is not None:
        front = fronts(analysis, "latency")
        return _best(front, latency_budget_ms, "ms at %d tokens" % PLAN_TOKENS).as_dict()
    if size_budget_mb is None:
        return fastest_within_int8_error(analysis)
    return _best(fronts(analysis, "bytes"), size_budget_mb, "MB").as_dict()


def fastest_within_int8_error(analysis: Analysis) -> dict[str, str]:
    """The plan predicted fastest on this device among those whose predicted error is no worse
    than uniform int8's: what a user without a size budget wants from mixed precision.

    Targeting uniform int8's bytes instead spent the bytes on fp16 storage and int4 MatMulNBits,
    which run no faster than fp32 here (node_latency.py), and made a cascade 1.7x slower than int8's
    on SST-2. Pricing by measured latency keeps them out unless a node is measured faster with them.
    """
    reference = uniform_plan(analysis, "int8")
    _, reference_ms, limit = analysis.predicted(reference)
    candidates = [(reference_ms, limit, reference)]
    for plans in fronts(analysis, "latency", for_speed=True).values():
        candidates += [(p.cost, p.error, p.as_dict()) for p in plans if p.error <= limit * (1 + 1e-9)]
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _best(front: dict[str, list[Plan]], budget: float, unit: str) -> Plan:
    plans = [plan_for_budget(f, budget, unit) for f in front.values()]
    return min(plans, key=lambda p: (p.error, p.cost))
