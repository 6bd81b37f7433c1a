"""Lower a graph to a plan's precisions, node by node, with onnxruntime's own tools.

A plan maps weight digests (weight_nodes.py) to candidate names; nodes it does not name stay fp32.
The stages run in a fixed order so each tool sees plain float nodes for the ones it lowers:
fp16 (onnxruntime.transformers.float16 with every other node blocked), int8 dynamic per-tensor and
per-channel (quantize_dynamic with nodes_to_quantize), int4 block-wise (MatMulNBitsQuantizer with
nodes_to_exclude; embeddings become GatherBlockQuantized). FACTS.md: the quantizers need the plain
graph, not an ORT-optimized one, and the int4 path needs `onnx-ir`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import onnx

from .candidates import BY_NAME, Candidate
from .weight_nodes import WeightNode, weight_nodes


def nodes_by_candidate(model: onnx.ModelProto, plan: Mapping[str, str]) -> dict[str, list[WeightNode]]:
    """The graph's weight nodes grouped by the candidate the plan gives their weight's digest."""
    groups: dict[str, list[WeightNode]] = {}
    for node in weight_nodes(model):
        name = plan.get(node.digest, "fp32")
        if node.op_type not in BY_NAME[name].ops:
            name = "int8-channel" if BY_NAME[name].bits < 8 else "fp32"  # e.g. int4 has no Gemm kernel
        groups.setdefault(name, []).append(node)
    return groups


def apply_plan(model: onnx.ModelProto, plan: Mapping[str, str]) -> onnx.ModelProto:
    groups = nodes_by_candidate(model, plan)
    lowered = copy.deepcopy(model)
    if "fp16" in groups:
        lowered = _fp16(lowered, {n.name for n in groups["fp16"]})
    for name in ("int8-tensor", "int8-channel"):
        if name in groups:
            lowered = _int8_dynamic(lowered, [n.name for n in groups[name]], BY_NAME[name])
    for name in ("int4-b32", "int4-b128"):
        if name in groups:
            lowered = _int4(lowered, [n.name for n in groups[name]], BY_NAME[name])
    return lowered


def _fp16(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    blocked = [n.name for n in model.graph.node if n.name not in nodes]
    return convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)


def _int8_dynamic(model: onnx.ModelProto, nodes: list[str], candidate: Candidate) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgeinfer-quant-") as folder, _quiet():
        out = Path(folder) / "lowered.onnx"
        quantize_dynamic(model, out, per_channel=candidate.per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(candidate.ops), nodes_to_quantize=nodes)
        return onnx.load(str(out))


def _int4(model: onnx.ModelProto, nodes: list[str], candidate: Candidate) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # its nodes_to_include widens the op-type selection rather than narrowing it: exclude the rest
    others = [n.name for n in model.graph.node if n.name not in set(nodes)]
    with _quiet():
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=candidate.block_size or 32, is_symmetric=True,
                                         nodes_to_exclude=others, op_types_to_quantize=("MatMul", "Gather"),
                                         quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer.process()
    return quantizer.model.model


class _quiet:
    """onnxruntime.quantization logs a line per node at INFO/WARNING; a CLI run should not."""

    def __enter__(self) -> None:
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc) -> None:
        logging.disable(self._level)
