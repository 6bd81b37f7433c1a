"""Spans of decoder blocks written with onnxruntime's own generative operators, for the fast path.

The spans traced from PyTorch (graphs.py) compute rotary embeddings, the grouped key/value
repetition and the causal mask with thousands of small operators: SmolLM2-135M's all-blocks span
holds 6,820 nodes, and in an onnxruntime profile of one decoding step its small operators took
about half of the kernel time (MatMul 52%). These spans are written node by node instead, as
onnxruntime-genai's model builder does for CPU: per block an RMSNorm, one query/key/value MatMul,
GroupQueryAttention (rotary inside, keys and values shared across query heads without copies,
causal within the new tokens), the output MatMul, SkipSimplifiedLayerNormalization (residual add
and the second norm in one operator) and the gated MLP with gate and up in one MatMul; the residual
add after the MLP joins the next block's first norm the same way. 11 operators a block, plus two
Concats of weights that onnxruntime folds when the session opens.

Each MatMul takes the same transposed weight the traced graphs hold, so the package's shared
weights file (shared_weights.py) stores every weight once for both kinds of span. They take what
GroupQueryAttention takes instead of positions and a bias: `seqlens_k` (tokens in the cache after
this step, minus one) and `total_sequence_length`; positions are then implied, so the runtime calls
them only while every block's cache holds the contiguous positions 0..n-1 (no pruned prompt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .segments import DecoderBlock, DecoderShape, cache_names

OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]


def gqa_supported(blocks: list[DecoderBlock]) -> str | None:
    """Why these blocks cannot be written with GroupQueryAttention here, or None when they can."""
    first = blocks[0]
    if first.heads % first.kv_heads:
        return "query heads are not a multiple of key/value heads"
    if first.head_dim % 16:
        return "onnxruntime's CPU kernel takes head sizes in multiples of 16"
    act = type(getattr(first.mlp, "act_fn", None)).__name__  # torch's SiLU, or transformers' own
    if act not in ("SiLU", "SiLUActivation") or not all(hasattr(first.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
        return "the MLP is not Llama's gated SiLU"
    if any(getattr(b.q, "bias", None) is not None or getattr(b.o, "bias", None) is not None for b in blocks):
        return "projections with biases"
    return None


def _weight(initializers: list[onnx.TensorProto], name: str, tensor: torch.Tensor) -> str:
    initializers.append(numpy_helper.from_array(np.ascontiguousarray(tensor.detach().float().numpy()), name))
    return name


def _joined(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], name: str,
            parts: list[tuple[str, torch.nn.Linear]]) -> str:
    """Projections of one input as one MatMul: a Concat of the separate transposed weights, which
    onnxruntime folds into one initializer when the session opens. The file keeps the separate
    weights, so they stay shared with the traced graphs; one product in place of three (or two)
    saves ~5% of a SmolLM2 step (fewer, larger kernels). Lowering keeps the join
    (quant/decoder_variant.py)."""
    names = [_weight(initializers, part, linear.weight.T) for part, linear in parts]
    nodes.append(helper.make_node("Concat", names, [name], axis=1))
    return name


def gqa_span(blocks: list[DecoderBlock], first_index: int, shape: DecoderShape) -> onnx.ModelProto:
    """One graph for consecutive blocks: hidden, seqlens_k, total_sequence_length and past_key/value_NN
    in, next_hidden and present_key/value_NN out (the traced spans' names for the cache)."""
    rotary = blocks[0].rotary
    angles = np.arange(shape.max_positions, dtype=np.float64)[:, None] * rotary.inv_freq.double().numpy()[None, :]
    inits = [numpy_helper.from_array((np.cos(angles) * rotary.scaling).astype(np.float32), "cos_cache"),
             numpy_helper.from_array((np.sin(angles) * rotary.scaling).astype(np.float32), "sin_cache")]
    indices = range(first_index, first_index + len(blocks))
    inputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "new", shape.hidden_size]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", shape.num_kv_heads, "past", shape.head_dim])
               for name in cache_names("past", indices)]
    outputs = [helper.make_tensor_value_info("next_hidden", TensorProto.FLOAT, ["batch", "new", shape.hidden_size])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", shape.num_kv_heads, "total", shape.head_dim])
                for name in cache_names("present", indices)]
    nodes: list[onnx.NodeProto] = []
    hidden = "hidden"
    unsummed: tuple[str, str] | None = None  # the residual and MLP output the block before left to add
    for block, b in zip(blocks, indices):
        p = f"b{b:02d}_"
        norm1, epsilon = _weight(inits, p + "norm1", block.attention_norm.weight), float(block.attention_norm.variance_epsilon)
        if unsummed is None:
            nodes.append(helper.make_node("SimplifiedLayerNormalization", [hidden, norm1], [p + "normed"], axis=-1,
                                          epsilon=epsilon))
        else:  # the residual add joins this norm
            hidden = p + "input"
            nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [unsummed[1], unsummed[0], norm1],
                                          [p + "normed", "", "", hidden], domain="com.microsoft", epsilon=epsilon))
        qkv = _joined(nodes, inits, p + "qkv", [(p + "q", block.q), (p + "k", block.k), (p + "v", block.v)])
        nodes.append(helper.make_node("MatMul", [p + "normed", qkv], [p + "qkv_out"]))
        nodes.append(helper.make_node(
            "GroupQueryAttention",  # packed query, key and value: no key/value inputs
            [p + "qkv_out", "", "", f"past_key_{b:02d}", f"past_value_{b:02d}", "seqlens_k",
             "total_sequence_length", "cos_cache", "sin_cache"],
            [p + "attended", f"present_key_{b:02d}", f"present_value_{b:02d}"], domain="com.microsoft",
            num_heads=block.heads, kv_num_heads=block.kv_heads, do_rotary=1, rotary_interleaved=0,
            scale=float(block.head_dim ** -0.5)))
        nodes.append(helper.make_node("MatMul", [p + "attended", _weight(inits, p + "o", block.o.weight.T)], [p + "o_out"]))
        nodes.append(helper.make_node(
            "SkipSimplifiedLayerNormalization", [p + "o_out", hidden, _weight(inits, p + "norm2", block.mlp_norm.weight)],
            [p + "normed2", "", "", p + "residual"], domain="com.microsoft", epsilon=float(block.mlp_norm.variance_epsilon)))
        mlp = block.mlp
        gate_up = _joined(nodes, inits, p + "gate_up", [(p + "gate", mlp.gate_proj), (p + "up", mlp.up_proj)])
        nodes.append(helper.make_node("MatMul", [p + "normed2", gate_up], [p + "gate_up_out"]))
        nodes.append(helper.make_node("Split", [p + "gate_up_out"], [p + "gate_out", p + "up_out"], axis=-1,
                                      num_outputs=2))
        nodes.append(helper.make_node("Sigmoid", [p + "gate_out"], [p + "gate_sigmoid"]))
        nodes.append(helper.make_node("Mul", [p + "gate_out", p + "gate_sigmoid"], [p + "silu"]))
        nodes.append(helper.make_node("Mul", [p + "silu", p + "up_out"], [p + "gated"]))
        nodes.append(helper.make_node("MatMul", [p + "gated", _weight(inits, p + "down", mlp.down_proj.weight.T)], [p + "down_out"]))
        unsummed = (p + "residual", p + "down_out")
    nodes.append(helper.make_node("Add", list(unsummed), ["next_hidden"]))
    model = helper.make_model(helper.make_graph(nodes, "gqa_span", inputs, outputs, inits), opset_imports=OPSETS)
    model.ir_version = 9
    return model


def write_gqa_span(blocks: list[DecoderBlock], first_index: int, shape: DecoderShape, path: Path) -> tuple[list[str], list[str]]:
    model = gqa_span(blocks, first_index, shape)
    onnx.save_model(model, str(path))
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]
