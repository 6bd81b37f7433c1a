"""Lower a graph to a plan's precisions, node by node, with onnxruntime's own tools.

A plan maps weight digests (weight_nodes.py) to candidate names; nodes it does not name stay fp32.
The stages run in a fixed order so each tool sees plain float nodes for the ones it lowers:
fp16 (onnxruntime.transformers.float16 with every other node blocked), int8 dynamic per-tensor and
per-channel (quantize_dynamic with nodes_to_quantize, after SmoothQuant's rescaling where the
analysis found it helps: smoothing.py), int4 block-wise (MatMulNBitsQuantizer with
nodes_to_exclude; embeddings become GatherBlockQuantized). The quantizers need the plain
graph, not an ORT-optimized one, and the int4 path needs `onnx-ir` (docs/platform-facts.md).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

from .candidates import BY_NAME, Candidate, for_op
from .smoothing import NONE, Smoothing, smoothed
from .weight_nodes import WeightNode, weight_nodes


def nodes_by_candidate(model: onnx.ModelProto, plan: Mapping[str, str]) -> dict[str, list[WeightNode]]:
    """The graph's weight nodes grouped by the candidate the plan gives their weight's digest."""
    groups: dict[str, list[WeightNode]] = {}
    for node in weight_nodes(model):
        name = for_op(plan.get(node.digest, "fp32"), node.op_type)
        groups.setdefault(name, []).append(node)
    return groups


def apply_plan(model: onnx.ModelProto, plan: Mapping[str, str], smoothing: Smoothing = NONE) -> onnx.ModelProto:
    """smoothing: divisors for the int8 nodes' inputs (smoothing.py); the other nodes never take them."""
    groups = nodes_by_candidate(model, plan)
    lowered = copy.deepcopy(model)
    if "fp16" in groups:
        lowered = _fp16(lowered, {n.name for n in groups["fp16"]})
    int8_nodes = [n for name in ("int8-tensor", "int8-channel") for n in groups.get(name, [])]
    if smoothing.scales and int8_nodes:
        lowered = smoothed(lowered, int8_nodes, smoothing)
        lowered = with_nodes(lowered, list(lowered.graph.node))  # the unscaled weights are read no more
    for name in ("int8-tensor", "int8-channel"):
        if name in groups:
            lowered = int8_dynamic(lowered, [n.name for n in groups[name]], BY_NAME[name])
    for name in ("int4-b32", "int4-b128"):
        if name in groups:
            lowered = _int4(lowered, [n.name for n in groups[name]], BY_NAME[name])
    return lowered


def _fp16(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """fp16 *storage*: the weight is kept as float16 and cast back to float32 where it is read.

    onnxruntime's CPU kernels gain nothing from fp16 compute here (docs/platform-facts.md), and its converter,
    given a node block list, emitted duplicate Cast outputs for nodes sharing an input (measured
    on MiniLM with one of q/k/v converted). A Cast per weight is what fp16 buys on a CPU anyway:
    half the bytes at float32 accuracy of the compute.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    casts = []
    for node in model.graph.node:
        if node.name not in nodes:
            continue
        position = 0 if node.op_type == "Gather" else 1
        tensor = initializers[node.input[position]]
        half = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}_fp16")
        model.graph.initializer.append(half)
        cast_output = f"{tensor.name}_fp16_as_fp32_{node.name}"
        casts.append(onnx.helper.make_node("Cast", [half.name], [cast_output], to=onnx.TensorProto.FLOAT,
                                           name=f"{node.name}_weight_cast"))
        node.input[position] = cast_output
    return with_nodes(model, casts + list(model.graph.node))  # a cast reads only an initializer: first is in order


def with_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """The graph's nodes replaced by `nodes` (in a valid order), initializers no node reads dropped."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def int8_dynamic(model: onnx.ModelProto, nodes: list[str], candidate: Candidate) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgeinfer-quant-") as folder, quiet_quantizer():
        out = Path(folder) / "lowered.onnx"
        quantize_dynamic(model, out, per_channel=candidate.per_channel, weight_type=QuantType.QInt8,
                         reduce_range=True,  # 7-bit weights: the same answers on every CPU (candidates.py)
                         op_types_to_quantize=list(candidate.ops), nodes_to_quantize=nodes)
        return onnx.load(str(out))


def _int4(model: onnx.ModelProto, nodes: list[str], candidate: Candidate) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # its nodes_to_include widens the op-type selection rather than narrowing it: exclude the rest
    others = [n.name for n in model.graph.node if n.name not in set(nodes)]
    with quiet_quantizer():
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=candidate.block_size or 32, is_symmetric=True,
                                         nodes_to_exclude=others, op_types_to_quantize=("MatMul", "Gather"),
                                         quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer.process()
    return _reduce_axes_as_inputs(quantizer.model.model)


REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _reduce_axes_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The int4 quantizer lifts the graph to opset 21, where Reduce* ops take `axes` as an input, not
    an attribute (and onnx's version converter leaves them as they were): move the attribute over."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        return model
    for node in model.graph.node:
        axes = next((a for a in node.attribute if a.name == "axes"), None)
        if node.op_type not in REDUCE_OPS or axes is None:
            continue
        name = f"{node.name or node.output[0]}_axes"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(list(axes.ints), np.int64), name))
        node.attribute.remove(axes)
        del node.input[1:]
        node.input.append(name)
    return model


class quiet_quantizer:
    """onnxruntime.quantization logs a line per node at INFO/WARNING, and its int4 quantizer divides
    by the zero scale of an all-zero block (numpy's RuntimeWarning; the result is masked to 0): a CLI
    run should show neither. Other warnings still reach the user."""

    def __enter__(self) -> None:
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning,
                                module=r"onnxruntime\.quantization")

    def __exit__(self, *exc) -> None:
        self._warnings.__exit__(*exc)
        logging.disable(self._level)
