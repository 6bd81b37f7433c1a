"""What a lowered LM head needs to screen the vocabulary for the fp32 head's greedy choice.

Every fp32 decoding step reads the whole head (SmolLM2: 49,152 x 576 floats, 113 MB, ~3.3 ms of a
~19 ms step here) to pick one token. A weight-only 8-bit head reads a quarter of that, and how far
its logit for row v can be from the fp32 one is bounded by quantities known in advance: with x the
normed state, e_v = W_v - Q(W)_v the row's rounding and d the activation rounding of the int8
compute, |W_v.x - Q(W)_v.(x + d)| <= ||e_v|| ||x|| + ||Q(W)_v|| ||d|| (Cauchy-Schwarz, twice).
The runtime computes the fp32 logit only for rows whose bound reaches the top
(runtime/decoder/head_screen.py). This module computes the two row norms once, at export.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from onnx import helper, numpy_helper

SCREEN_BITS = 8  # a 4-bit head's bounds are ~16x wider: most of the vocabulary would pass the screen


def screen_norms(fp32_weight: np.ndarray, lowered_head: onnx.ModelProto) -> tuple[np.ndarray, int] | None:
    """float32 [2, vocab]: each row's quantization error norm, then its quantized norm; and the
    block the lowered head's int8 compute quantizes activations in. None when the head is not one
    weight-only MatMulNBits of SCREEN_BITS bits over `fp32_weight`'s rows."""
    nodes = [n for n in lowered_head.graph.node if n.op_type == "MatMulNBits"]
    if len(nodes) != 1:
        return None
    node = nodes[0]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rows, columns, block = attributes.get("N"), attributes.get("K"), attributes.get("block_size")
    if attributes.get("bits") != SCREEN_BITS or fp32_weight.shape != (rows, columns) or not block:
        return None
    initializers = {t.name: t for t in lowered_head.graph.initializer}
    if node.input[1] not in initializers or node.input[2] not in initializers:
        return None
    codes = numpy_helper.to_array(initializers[node.input[1]]).reshape(rows, -1, block).astype(np.float32)
    scales = numpy_helper.to_array(initializers[node.input[2]]).reshape(rows, -1, 1).astype(np.float32)
    zero = 2.0 ** (SCREEN_BITS - 1)  # MatMulNBits' default zero point
    if len(node.input) > 3 and node.input[3]:
        if node.input[3] not in initializers:
            return None
        zero = numpy_helper.to_array(initializers[node.input[3]]).reshape(rows, -1, 1).astype(np.float32)
    quantized = ((codes - zero) * scales).reshape(rows, -1)[:, :columns]
    errors = np.linalg.norm(fp32_weight.astype(np.float32) - quantized, axis=1)
    return np.stack([errors, np.linalg.norm(quantized, axis=1)]).astype(np.float32), int(block)


def _head_weight_tensor(fp32_head: onnx.ModelProto) -> onnx.TensorProto | None:
    """The [vocab, hidden] weight of a head graph's Gemm(transB=1) (export/decoder/segments.py)."""
    initializers = {t.name: t for t in fp32_head.graph.initializer}
    for node in fp32_head.graph.node:
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        if node.op_type == "Gemm" and transposed and node.input[1] in initializers:
            return initializers[node.input[1]]
    return None


def head_weight(fp32_head: onnx.ModelProto) -> np.ndarray | None:
    tensor = _head_weight_tensor(fp32_head)
    return None if tensor is None else numpy_helper.to_array(tensor)


def head_weight_location(package_root: Path, fp32_head: str) -> tuple[str, int] | None:
    """(package file, byte offset) of the fp32 head graph's weight, stored as external data."""
    tensor = _head_weight_tensor(onnx.load(str(package_root / fp32_head), load_external_data=False))
    if tensor is None or tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    entries = {e.key: e.value for e in tensor.external_data}
    if "location" not in entries:
        return None
    return str(PurePosixPath(fp32_head).parent / entries["location"]), int(entries.get("offset", "0"))
