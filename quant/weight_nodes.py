"""The weight-bearing nodes of a graph, named so one plan applies to every graph of a package.

A package holds the same weights in several graphs (each block alone, and the fused full-depth
span), exported separately, so node names differ between them. A weight's content digest does
not: the plan is made on the full-depth graph and carried to the segment graphs by digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import onnx
from onnx import numpy_helper

WEIGHT_OPS = ("MatMul", "Gemm", "Gather")


@dataclass(frozen=True)
class WeightNode:
    name: str
    op_type: str
    weight: str  # initializer name
    shape: tuple[int, ...]
    digest: str
    input_axis: int  # the weight axis summed over (MatMul: 0; Gemm with transB: 1; Gather: none, 1)

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def _weight_input(node: onnx.NodeProto) -> int:
    return 0 if node.op_type == "Gather" else 1


def weight_nodes(model: onnx.ModelProto) -> list[WeightNode]:
    """Nodes whose weight is a two-dimensional float initializer, in graph order."""
    initializers = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        tensor = initializers.get(node.input[_weight_input(node)])
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        array = numpy_helper.to_array(tensor)
        digest = hashlib.sha256(array.tobytes()).hexdigest()[:16]
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        input_axis = 1 if node.op_type == "Gather" or transposed else 0
        found.append(WeightNode(node.name, node.op_type, tensor.name, tuple(int(d) for d in tensor.dims), digest,
                                input_axis))
    return found


def weight_array(model: onnx.ModelProto, node: WeightNode):
    tensor = next(t for t in model.graph.initializer if t.name == node.weight)
    return numpy_helper.to_array(tensor)
