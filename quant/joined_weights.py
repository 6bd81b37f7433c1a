"""Lowering a MatMul whose weight is a Concat of initializers (a joined projection, written so that
the package stores each weight once: export/decoder/gqa_graphs.py) and keeping it one product.

onnxruntime's quantizers lower a MatMul only when its weight is an initializer. So the join is
undone first (one MatMul per part, their outputs concatenated), the parts are lowered, and lowered
parts that read one input are joined again: MatMulNBits keeps its blocks per output column, so the
joined weight is the parts' weights and scales stacked along N, each a Concat that onnxruntime folds
when the session opens. The file then shares the lowered parts with the graphs that use them apart.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .apply_plan import with_nodes


def split_joined(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMul(x, Concat(W1..Wn, axis=1)) -> Concat(MatMul(x, W1) .. MatMul(x, Wn), axis=-1)."""
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = []
    for node in model.graph.node:
        join = producers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if join is None or not _joins_weights(join, initializers):
            nodes.append(node)
            continue
        parts = [f"{node.output[0]}_part{i}" for i in range(len(join.input))]
        nodes += [helper.make_node("MatMul", [node.input[0], weight], [part], name=f"{node.name or node.output[0]}_part{i}")
                  for i, (weight, part) in enumerate(zip(join.input, parts))]
        nodes.append(helper.make_node("Concat", parts, [node.output[0]], axis=-1, name=f"{node.output[0]}_join"))
    used = {i for n in nodes for i in n.input}
    return with_nodes(model, [n for n in nodes if n.op_type != "Concat" or any(o in used for o in n.output)
                              or not _joins_weights(n, initializers)])


def join_lowered(model: onnx.ModelProto) -> onnx.ModelProto:
    """Concat(MatMulNBits(x, B1, S1) .., axis=-1) -> MatMulNBits(x, Concat(B..), Concat(S..)), N summed."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    merged: set[int] = set()
    nodes = []
    for node in model.graph.node:
        parts = [producers.get(i) for i in node.input] if node.op_type == "Concat" else []
        if not parts or not _same_lowering(node, parts, readers):
            nodes.append(node)
            continue
        merged.update(id(p) for p in parts)
        first = parts[0]
        stem = node.output[0]
        attributes = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        attributes["N"] = sum(_attribute(p, "N") for p in parts)
        nodes.append(helper.make_node("Concat", [p.input[1] for p in parts], [f"{stem}_weight"], axis=0))
        nodes.append(helper.make_node("Concat", [p.input[2] for p in parts], [f"{stem}_scales"], axis=0))
        nodes.append(helper.make_node("MatMulNBits", [first.input[0], f"{stem}_weight", f"{stem}_scales"], [stem],
                                      domain="com.microsoft", name=f"{stem}_joined", **attributes))
    return with_nodes(model, [n for n in nodes if id(n) not in merged])


def _joins_weights(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    return (node.op_type == "Concat" and _attribute(node, "axis") in (1, -1) and len(node.input) > 1
            and all(i in initializers and len(initializers[i].dims) == 2 for i in node.input))


def _same_lowering(concat: onnx.NodeProto, parts: list[onnx.NodeProto | None], readers: dict[str, int]) -> bool:
    """Parts lowered alike from one input, each read by this Concat alone (on the last axis)."""
    if _attribute(concat, "axis") != -1 or len(parts) < 2:
        return False
    if not all(p is not None and p.op_type == "MatMulNBits" and len(p.input) == 3 and len(p.output) == 1
               and readers.get(p.output[0]) == 1 for p in parts):
        return False
    settings = [{a.name: helper.get_attribute_value(a) for a in p.attribute if a.name != "N"} for p in parts]
    return all(p.input[0] == parts[0].input[0] for p in parts) and all(s == settings[0] for s in settings)


def _attribute(node: onnx.NodeProto, name: str) -> int | None:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)
