"""Latency of one weight node at each precision, measured on this device.

On a 2-core EPYC (docs/platform-facts.md) int8 dynamic per-channel MatMuls run at ~0.6x fp32 while int4 (MatMulNBits)
and fp16 run no faster than fp32, so byte savings and time savings point at different plans; only
a measurement on the target tells which. Each distinct (op, weight shape) is timed alone as a
one-node graph lowered by the same apply_plan as the model, at the token count the plan is made
for; results are cached per device fingerprint, so a second export on the device costs nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime.sessions import default_threads, open_session
from ..targets.fingerprint import device_fingerprint, fingerprint_key
from .apply_plan import apply_plan
from .model_latency import median_run_ms
from .candidates import Candidate
from .weight_nodes import WeightNode, weight_nodes

REPEATS = 30


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEINFER_CACHE", Path.home() / ".cache" / "edgeinfer")) / "node-latency"


def _one_node_graph(op_type: str, shape: tuple[int, ...], input_axis: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), "w")
    if op_type == "Gather":
        x = helper.make_tensor_value_info("x", TensorProto.INT64, [1, "t"])
        node = helper.make_node("Gather", ["w", "x"], ["y"], name="node")
    else:  # Gemm is timed as the MatMul it is lowered to
        k = shape[input_axis]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "t", k])
        if input_axis == 1:
            weight = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="node")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "node", [x], [y], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _time(model: onnx.ModelProto, op_type: str, shape: tuple[int, ...], k: int, tokens: int, threads: int) -> float:
    graph = open_session(model.SerializeToString(), threads)
    if op_type == "Gather":
        feed = {"x": (np.arange(tokens, dtype=np.int64) % shape[0]).reshape(1, -1)}
    else:
        feed = {"x": np.random.default_rng(1).standard_normal((1, tokens, k)).astype(np.float32)}
    return median_run_ms(graph, feed, REPEATS, warmup_seconds=0.05)  # one small op: warm in a few runs


def node_latencies(nodes: list[WeightNode], candidates: list[Candidate], tokens: int,
                   threads: int | None = None) -> dict[tuple[str, str], float]:
    """{(node name, candidate name): median ms} for every candidate that can lower the node."""
    threads = threads or default_threads()
    fingerprint = device_fingerprint(threads)
    path = cache_dir() / f"{fingerprint_key(fingerprint)}.json"
    cached: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    result = {}
    for node in nodes:
        op = "Gather" if node.op_type == "Gather" else "MatMul"
        for candidate in candidates:
            if node.op_type not in candidate.ops:
                continue
            key = f"{op}:{'x'.join(map(str, node.shape))}:{node.input_axis}:{tokens}:{candidate.name}"
            if key not in cached:
                model = _one_node_graph(op, node.shape, node.input_axis)
                lowered = apply_plan(model, {weight_nodes(model)[0].digest: candidate.name})
                cached[key] = round(_time(lowered, op, node.shape, node.shape[node.input_axis], tokens, threads), 5)
            result[(node.name, candidate.name)] = cached[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp-{os.getpid()}")
    temporary.write_text(json.dumps(cached, indent=0))
    os.replace(temporary, path)
    return result
