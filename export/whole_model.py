"""The fallback for families with no adapter: Optimum exports the whole model as one ONNX graph,
and the package holds that graph alone (schema 1.9, segment kind "whole").

An adapter splits a model into embed, blocks and head, which exits, pruning and skipping need.
Optimum knows many more architectures (optimum-onnx 0.1.0 lists about 160) but gives one graph per
model. Such a package runs the whole model on every input; it still gets precision variants, probe,
bench, and the memory and latency budgets. optimum-onnx 0.1.0 pins transformers below 4.58, so it
lives in an extra of its own (`edgeinfer[optimum]`).

The graph is given the interface of a package's fused full span: `attention_bias` (0 for a token,
PAD_BIAS for padding) instead of `attention_mask`, and `logits` or a pooled `embedding` as its one
output, so that quantization, probe and the runtime feed it as they feed any full span.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import __version__
from ..errors import ExportError
from ..manifest import PAD_BIAS, SCHEMA_VERSION, VALID_BIAS_FLOOR, WHOLE, Manifest, ModelFacts, Segment, TokenizerSpec, Variant
from ..runtime.sessions import open_session
from .model_source import LoadedModel, load_model, tokenizer_spec
from .package_writer import discard, finalize, prepare_staging
from .shared_weights import WEIGHTS_FILE, share_weights
from .validate import TOLERANCE, reference_output, sample_batches

INSTALL_HINT = ("pip install 'edgeinfer[optimum]' (in an environment of its own: optimum-onnx pins "
                "transformers below 4.58)")
OPTIMUM_TASKS = {"feature-extraction": "feature-extraction", "text-classification": "text-classification"}
GRAPH = "graphs/whole.onnx"


def export_whole_model(model: str, output: Path, task: str, max_length: int, force: bool, why: str) -> Manifest:
    """why: the reason the model takes this path (recorded, and said by `inspect`)."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError:
        raise ExportError(f"{why}; to export it as one graph through Optimum: {INSTALL_HINT}") from None
    if task not in OPTIMUM_TASKS:
        raise ExportError(f"task {task!r} has no whole-model export; use feature-extraction or text-classification")
    started = time.perf_counter()
    loaded = load_model(model, task, with_adapter=False)
    staging = prepare_staging(output, force)
    try:
        with tempfile.TemporaryDirectory(prefix="edgeinfer-optimum-") as raw:
            try:
                main_export(str(loaded.directory), output=raw, task=OPTIMUM_TASKS[task], library_name="transformers",
                            do_validation=False, no_post_process=True)
            except Exception as err:  # Optimum's own refusals: an unknown architecture, a task it lacks
                raise ExportError(f"Optimum could not export {loaded.directory}: {str(err).splitlines()[0]}") from None
            graph = edge_interface(onnx.load(str(Path(raw) / "model.onnx")), task, loaded.normalize_embedding)
        spec = tokenizer_spec(loaded, max_length, "token_type_ids" in [i.name for i in graph.graph.input])
        (staging / spec.path).write_text(loaded.tokenizer_json, encoding="utf-8")
        onnx.save(graph, str(staging / GRAPH))
        share_weights([staging / GRAPH], staging / "graphs" / WEIGHTS_FILE)
        validation = _validate(staging / GRAPH, loaded, task, spec)
        config = loaded.model.config
        segment = Segment(name="whole", kind=WHOLE, index=0, inputs=tuple(i.name for i in graph.graph.input),
                          outputs=tuple(o.name for o in graph.graph.output), variants=(Variant("fp32", GRAPH),))
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            model=ModelFacts(family="optimum", model_type=config.model_type, task=task,
                             num_blocks=max(1, int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))),
                             hidden_size=hidden,
                             num_heads=int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0)),
                             labels=loaded.labels, embedding_dim=hidden if task == "feature-extraction" else None,
                             normalize_embedding=loaded.normalize_embedding, source=loaded.source),
            tokenizer=spec, segments=(segment,), exits=(), exit_thresholds=(), validation=validation,
            export={"edgeinfer": __version__, "exporter": "optimum", "why": why,
                    "optimum_onnx": _version("optimum-onnx"),
                    "transformers": __import__("transformers").__version__, "onnx": onnx.__version__,
                    "python": platform.python_version(), "seconds": round(time.perf_counter() - started, 1)},
        )
        return finalize(staging, output, manifest)
    except BaseException:
        discard(staging)
        raise


def edge_interface(model: onnx.ModelProto, task: str, normalize: bool) -> onnx.ModelProto:
    """Optimum's graph with a full span's inputs and output (module docstring)."""
    graph = model.graph
    names = [i.name for i in graph.input]
    if "input_ids" not in names or "attention_mask" not in names:
        raise ExportError(f"Optimum's graph takes {names}; edgeinfer feeds input_ids and attention_mask")
    mask_input = next(i for i in graph.input if i.name == "attention_mask")
    graph.input.remove(mask_input)
    batch_and_tokens = [d.dim_param or "batch" for d in mask_input.type.tensor_type.shape.dim]
    graph.input.append(helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT, batch_and_tokens))
    floor = helper.make_tensor("edge_valid_bias_floor", TensorProto.FLOAT, [], [VALID_BIAS_FLOOR])
    graph.initializer.append(floor)
    mask_nodes = [helper.make_node("Greater", ["attention_bias", floor.name], ["edge_is_token"]),
                  helper.make_node("Cast", ["edge_is_token"], ["attention_mask"], to=TensorProto.INT64)]
    for node in reversed(mask_nodes):
        graph.node.insert(0, node)
    wanted = "logits" if task == "text-classification" else "last_hidden_state"
    produced = [o.name for o in graph.output]
    if wanted not in produced:
        raise ExportError(f"Optimum's graph outputs {produced}; edgeinfer needs {wanted!r} for {task}")
    for output in [o for o in graph.output if o.name != wanted]:
        graph.output.remove(output)
    if task == "feature-extraction":
        _mean_pool(graph, normalize)
    return model


def _mean_pool(graph: onnx.GraphProto, normalize: bool) -> None:
    """last_hidden_state -> embedding: the mean over tokens (padding excluded), L2-normalised when the
    model's sentence-transformers modules say so, as sentence-transformers computes it."""
    graph.output.remove(graph.output[0])
    axes = helper.make_tensor("edge_token_axis", TensorProto.INT64, [1], [1])
    last = helper.make_tensor("edge_last_axis", TensorProto.INT64, [1], [-1])
    tiny = helper.make_tensor("edge_tiny", TensorProto.FLOAT, [], [1e-9])
    graph.initializer.extend([axes, last, tiny])
    pooled = "edge_mean" if normalize else "embedding"
    graph.node.extend([
        helper.make_node("Cast", ["edge_is_token"], ["edge_mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["edge_mask_f", last.name], ["edge_mask_3d"]),
        helper.make_node("Mul", ["last_hidden_state", "edge_mask_3d"], ["edge_masked"]),
        helper.make_node("ReduceSum", ["edge_masked", axes.name], ["edge_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["edge_mask_3d", axes.name], ["edge_count"], keepdims=0),
        helper.make_node("Max", ["edge_count", tiny.name], ["edge_count_safe"]),
        helper.make_node("Div", ["edge_sum", "edge_count_safe"], [pooled]),
        *([helper.make_node("LpNormalization", [pooled], ["embedding"], axis=-1, p=2)] if normalize else []),
    ])
    graph.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", None]))


def _validate(path: Path, loaded: LoadedModel, task: str, spec: TokenizerSpec) -> dict:
    """The graph against the transformers model's own forward (pooled as sentence-transformers
    pools), on sequences of several lengths and a padded batch."""
    session = open_session(path, threads=1)
    special = [i for i in loaded.special_ids if i != loaded.pad_id] or [loaded.pad_id]
    batches = sample_batches(loaded.model.config.vocab_size, loaded.special_ids, special[0], special[-1],
                             loaded.pad_id, spec.max_length)
    worst = 0.0
    for ids, mask in batches:
        feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                 "attention_bias": np.where(mask > 0, 0.0, PAD_BIAS).astype(np.float32)}
        got = session.run(None, {k: feeds[k] for k in (i.name for i in session.get_inputs())})[0]
        want = reference_output(loaded.model, task, loaded.normalize_embedding, ids, mask)
        worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= TOLERANCE * 10:
        raise ExportError(f"validation failed: Optimum's graph differs from the model by {worst:.2e}")
    return {"max_abs_diff": worst, "passed": True, "tolerance": TOLERANCE * 10, "batches": len(batches),
            "reference": "the transformers model's forward"}


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
