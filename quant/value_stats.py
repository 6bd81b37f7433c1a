"""The value-driven proxy (after QuantMCU): rank nodes by what their values look like, in seconds.

QuantMCU (arXiv 2401.13714) lowers the bit width where the feature map's value
distribution allows it and keeps outlier-heavy tensors at 8 bits or more. Here one fp32 pass over
the calibration batches records, for every weight node's input activation, the outlier ratio
(max |x| / 99.9th percentile |x|), the kurtosis and the entropy of its value histogram, and from
them and the weights estimates each candidate's relative noise at the node's output:

    weight noise  ||W - Q(W)||^2 / ||W||^2        (rounding the weights as the candidate would)
    input noise   (range / 255)^2 / 12 / E[x^2]   (int8 dynamic quantizes the input per tensor)

so a node whose inputs have a few huge values (a wide range over a small mean square) scores
badly for int8, as measured on BERT-like models. No graph is lowered and nothing is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .candidates import INT8_WEIGHT_LEVELS, Candidate
from .smoothing import NONE, Smoothing
from .tensor_values import real_rows
from .weight_nodes import WeightNode, weight_array

OUTLIER_RATIO_FOR_8_BITS = 6.0  # max / p99.9 above this: the node keeps 8 bits or more


@dataclass(frozen=True)
class ValueStats:
    outlier_ratio: float
    kurtosis: float
    entropy_bits: float
    input_noise_int8: float  # relative noise of per-tensor uint8 dynamic quantization of the input

    @property
    def has_outliers(self) -> bool:
        return self.outlier_ratio > OUTLIER_RATIO_FOR_8_BITS


def activation_stats(model: onnx.ModelProto, nodes: list[WeightNode],
                     feeds: tuple[dict[str, np.ndarray], ...], smoothing: Smoothing = NONE) -> dict[str, ValueStats]:
    """Stats of every MatMul/Gemm input over the calibration batches (Gather inputs are ids: none);
    int8's input noise is that of the input as int8 receives it, divided by its smoothing."""
    by_name = {n.name: n for n in model.graph.node}
    inputs = {node.name: by_name[node.name].input[0] for node in nodes if node.op_type != "Gather"}
    divisors = {inputs[n.name]: smoothing.of(n) for n in nodes if smoothing.of(n) is not None}
    wanted = sorted(set(inputs.values()))
    samples: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    noise: dict[str, list[float]] = {name: [] for name in wanted}
    for batch in real_rows(model, wanted, feeds):
        for name, rows in batch.items():
            received = rows / divisors[name] if name in divisors else rows
            span = max(float(received.max()), 0.0) - min(float(received.min()), 0.0)
            noise[name].append((span / 255.0) ** 2 / 12.0 / max(float(np.mean(received ** 2)), 1e-12))
            samples[name].append(rows.ravel()[:: max(1, rows.size // 200_000)])
    stats = {}
    for node_name, tensor in inputs.items():
        values = np.concatenate(samples[tensor]).astype(np.float64)
        stats[node_name] = _describe(values, float(np.mean(noise[tensor])))
    return stats


def _describe(values: np.ndarray, input_noise: float) -> ValueStats:
    magnitude = np.abs(values)
    p999 = float(np.quantile(magnitude, 0.999)) or 1e-12
    centred = values - values.mean()
    variance = float(np.mean(centred ** 2)) or 1e-12
    histogram, _ = np.histogram(values, bins=256)
    probability = histogram[histogram > 0] / histogram.sum()
    return ValueStats(outlier_ratio=float(magnitude.max()) / p999,
                      kurtosis=float(np.mean(centred ** 4)) / variance ** 2,
                      entropy_bits=float(-(probability * np.log2(probability)).sum()),
                      input_noise_int8=input_noise)


def weight_noise(weights: np.ndarray, candidate: Candidate, input_axis: int) -> float:
    """Relative squared error of the weights rounded as the candidate rounds them (symmetric)."""
    w = np.moveaxis(weights.astype(np.float64), input_axis, 0)  # [K, N]: channels along N
    if candidate.bits == 32:
        return 0.0
    if candidate.bits == 16:
        rounded = w.astype(np.float16).astype(np.float64)
    elif candidate.bits == 8:
        peak = np.abs(w).max(axis=0, keepdims=True) if candidate.per_channel else np.abs(w).max()
        scale = np.maximum(peak, 1e-12) / INT8_WEIGHT_LEVELS
        rounded = np.clip(np.round(w / scale), -INT8_WEIGHT_LEVELS, INT8_WEIGHT_LEVELS) * scale
    else:
        block = candidate.block_size or 32
        k = w.shape[0]
        padded = np.pad(w, ((0, (-k) % block), (0, 0)))
        blocks = padded.reshape(-1, block, w.shape[1])
        scale = np.maximum(np.abs(blocks).max(axis=1, keepdims=True), 1e-12) / 7.0
        rounded = (np.clip(np.round(blocks / scale), -8, 7) * scale).reshape(padded.shape)[:k]
    return float(np.sum((w - rounded) ** 2) / max(np.sum(w ** 2), 1e-30))


def proxy_error(model: onnx.ModelProto, node: WeightNode, candidate: Candidate,
                stats: dict[str, ValueStats], smoothing: Smoothing = NONE) -> float:
    """Estimated relative noise at the node's output when it alone is lowered to `candidate` (int8
    rounds the smoothed weight, relative to the smoothed weight's own size)."""
    weights = weight_array(model, node)
    scale = smoothing.of(node) if candidate.bits == 8 else None
    noise = weight_noise(weights if scale is None else weights * scale[:, None], candidate, node.input_axis)
    if candidate.bits == 8 and node.name in stats:
        noise += stats[node.name].input_noise_int8
    return noise
