"""A lowered variant of a decoder package: every block, span, key/value and head graph lowered by
onnxruntime's quantizers, the embedding kept as it is.

For batch-1 decoding a CPU streams every weight once per token, so fewer weight bytes is most of the
speed. Measured on SmolLM2-135M here (2 threads, one decode step, next-token agreement with fp32 on
teacher-forced continuations of 9 prompts): fp32 41.2 ms; weight-only 8-bit block-32 MatMulNBits
with int8 compute (accuracy_level 4) 24.4 ms at 0.977; 4-bit block-32 15.3 ms at 0.729; dynamic int8
per-channel (activations quantized per tensor) 21.6 ms at 0.681; 8-bit with fp32 compute 495 ms.
Hence `q8` is the default: the scheme that keeps the model's answers. The variant's quality is
recorded as that next-token agreement along fp32's own greedy continuations.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputError
from ..export.package_writer import discard, finalize, prepare_staging
from ..export.shared_weights import WEIGHTS_FILE, share_weights
from ..manifest import HeadScreen, Manifest, PrecisionVariant, Variant
from ..progress import progress_bar
from ..runtime.package import Package, open_package
from .apply_plan import int8_dynamic, quiet_quantizer, with_nodes
from .candidates import INT8_CHANNEL
from .head_screen import head_weight, head_weight_location, screen_norms
from .joined_weights import join_lowered, split_joined

LOWERED_KINDS = ("block", "span", "kv", "head")
# name: (bits, block size) for weight-only MatMulNBits; "int8" is onnxruntime's dynamic int8
SCHEMES = {"q8": (8, 32), "q4": (4, 32), "int8": (8, None)}


def _gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm(transB=1) -> MatMul(+Add): onnxruntime's dynamic quantizer lowers MatMul, not Gemm (the
    fp32 head is a Gemm only so that it can share the embedding's bytes)."""
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if weight is None or attributes.get("transB") != 1 or attributes.get("transA", 0) != 0 \
                or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), f"{weight.name}_t")
        model.graph.initializer.append(transposed)
        biased = len(node.input) > 2 and node.input[2] and not _all_zero(model, node.input[2])
        product = f"{node.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], transposed.name],
                                      [product if biased else node.output[0]], name=f"{node.name}_matmul"))
        if biased:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
    return with_nodes(model, nodes)


def _all_zero(model: onnx.ModelProto, name: str) -> bool:
    """Whether `name` is a constant of zeros (the tracer's bias for a head without one): its Add
    would cost a pass over the whole vocabulary on every step for nothing."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return not numpy_helper.to_array(tensor).any()
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return value is not None and not numpy_helper.to_array(value.t).any()
    return False


def lower(model: onnx.ModelProto, scheme: str) -> onnx.ModelProto:
    return join_lowered(_lower_parts(split_joined(_gemm_as_matmul(model)), scheme))


def _lower_parts(model: onnx.ModelProto, scheme: str) -> onnx.ModelProto:
    weights = {t.name for t in model.graph.initializer}
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    if not matmuls:
        return model
    bits, block = SCHEMES[scheme]
    if block is None:
        return int8_dynamic(model, matmuls, INT8_CHANNEL)
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=bits)
    with quiet_quantizer():
        quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=[])
        quantizer.process()
    return quantizer.model.model


def add_decoder_variant(package_path: str | Path, scheme: str = "q8", output: str | Path | None = None,
                        force: bool = False) -> Manifest:
    if scheme not in SCHEMES:
        raise InputError(f"decoder quantization scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    name = scheme
    package = open_package(package_path)
    manifest = package.manifest
    if manifest.decoder is None:
        raise InputError(f"{package_path} is not a text-generation package")
    if any(v.name == name for v in manifest.precision_variants) and not force:
        raise InputError(f"the package already has a variant {name!r}; pass --force to replace it")
    output = Path(output or package.root)
    staging = prepare_staging(output, True if output.resolve() == package.root else force)
    try:
        shutil.copytree(package.path(manifest.tokenizer.path).parent, staging / "tokenizer", dirs_exist_ok=True)
        segments, graphs = [], []
        screen_norms_found = None
        with progress_bar(len(manifest.segments), f"writing variant {name}") as bar:
            for segment in manifest.segments:
                kept = tuple(v for v in segment.variants if v.precision != name)
                for variant in kept:
                    onnx.save(onnx.load(str(package.path(variant.path))), str(staging / variant.path))
                    graphs.append(staging / variant.path)
                if segment.kind in LOWERED_KINDS:
                    path = f"graphs/{Path(segment.graph('fp32')).stem}.{name}.onnx"
                    fp32 = onnx.load(str(package.path(segment.graph("fp32"))))
                    weight = head_weight(fp32) if segment.kind == "head" else None  # before lowering edits the graph
                    lowered_graph = lower(fp32, scheme)
                    if weight is not None:
                        screen_norms_found = (weight, screen_norms(weight, lowered_graph))
                    onnx.save(lowered_graph, str(staging / path))
                    graphs.append(staging / path)
                else:  # the embedding is a lookup: int8 would only save bytes, at some accuracy
                    path = segment.graph("fp32")
                segments.append(replace(segment, variants=(*kept, Variant(name, path))))
                bar.update()
        share_weights(graphs, staging / "graphs" / WEIGHTS_FILE)
        from ..export.decoder.pipeline import embedding_location

        facts = replace(manifest.decoder, **embedding_location(staging / "graphs"))  # the file was rewritten
        facts = replace(facts, head_screen=_head_screen(package, staging, name, screen_norms_found))
        lowered = replace(manifest, segments=tuple(segments), decoder=facts,
                          precision_variants=tuple(v for v in manifest.precision_variants if v.name != name))
        lowered = replace(lowered, precision_variants=(*lowered.precision_variants, PrecisionVariant(
            name=name, plan={}, bytes=_variant_bytes(staging, lowered, name),
            quality={"scheme": scheme, **next_token_agreement(Package(staging, lowered), name)}, thresholds=())))
        return finalize(staging, output, lowered)
    except BaseException:
        discard(staging)
        raise


def _head_screen(package: Package, staging: Path, name: str,
                 found: tuple[np.ndarray, tuple[np.ndarray, int] | None] | None) -> HeadScreen | None:
    """The screen this variant's head offers (quant/head_screen.py), else the one the package had
    for another variant (its file carried over), else none."""
    location = head_weight_location(staging, package.manifest.segment("head").graph("fp32"))
    if found is not None and found[1] is not None and location is not None:
        weight, (norms, block) = found
        mapped = np.memmap(staging / location[0], np.float32, "r", location[1], weight.shape)
        if np.array_equal(mapped, weight):  # the rows the runtime rescores
            path = f"graphs/head_screen.{name}.bin"
            norms.tofile(staging / path)
            return HeadScreen(name, path, block, *location)
    earlier = package.manifest.decoder.head_screen
    if earlier is None or earlier.precision == name or location is None:
        return None
    shutil.copyfile(package.path(earlier.path), staging / earlier.path)
    return replace(earlier, weight_file=location[0], weight_offset=location[1])  # the weights file was rewritten


def _variant_bytes(staging: Path, manifest: Manifest, name: str) -> int:
    """What a session set running this variant holds: the fused blocks, the head and the embedding."""
    from ..runtime.onnx_wire import external_bytes

    total = 0
    for segment in (manifest.segment("embed"), manifest.segment("blocks"), manifest.segment("head")):
        data = (staging / segment.graph(name)).read_bytes()
        total += len(data) + external_bytes(data)
    return total


def next_token_agreement(package: Package, name: str, new_tokens: int = 64) -> dict:
    from ..export.decoder.pipeline import VALIDATION_PROMPTS
    from ..runtime.decoder.generation import DecoderSession

    session = DecoderSession(package)
    agree = total = 0
    for prompt in VALIDATION_PROMPTS:
        ids = session.encode(prompt, chat=False)
        continuation = list(session.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens).token_ids)
        reference = session.sequence_logits(ids + continuation)[len(ids) - 1:-1]
        lowered = session.sequence_logits(ids + continuation, precision=name)[len(ids) - 1:-1]
        agree += int((reference.argmax(-1) == lowered.argmax(-1)).sum())
        total += len(continuation)
    return {"next_token_agreement_with_fp32": round(agree / total, 6), "positions": total,
            "measured_on": "fp32 greedy continuations of the export's validation prompts"}
