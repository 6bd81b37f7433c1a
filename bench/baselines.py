"""Plain baselines measured in the same run as edgeinfer: the whole model as one onnxruntime
session (exported the way Optimum does, one graph from the Hugging Face forward), and its int8
dynamic per-channel quantization (onnxruntime.quantization, the recipe measured best: docs/platform-facts.md).

Building them needs the export extra (torch, transformers); running them needs onnxruntime only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.sessions import open_session
from ..runtime.tokenize import EncodedBatch


def export_monolithic(model_dir: str, task: str, path: Path, attention: str | None = None) -> Path:
    """attention: the transformers attention implementation to trace ("eager" leaves the pattern that
    onnxruntime's transformer optimizer fuses); the library's default when None."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    from ..export.onnx_graphs import tracer_warnings_ignored

    loader = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    model = loader.from_pretrained(model_dir, **({} if attention is None else {"attn_implementation": attention})).eval()
    output = "logits" if task == "text-classification" else "last_hidden_state"

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids), output)

    ids = torch.ones((1, 8), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "token_type_ids": {0: "batch", 1: "sequence"}, output: {0: "batch"}}
    with tracer_warnings_ignored(), torch.no_grad():
        torch.onnx.export(Forward(), (ids, ids, torch.zeros_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=[output],
                          dynamic_axes=axes)
    return path


def quantize_int8(source: Path, path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..quant.apply_plan import quiet_quantizer

    with quiet_quantizer():  # its advice to pre-process the graph is for its own users, not a bench report
        quantize_dynamic(str(source), str(path), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    return path


def fused_int8(model_dir: str, folder: Path) -> Path:
    """The fastest int8 onnxruntime offers a BERT-like encoder on a CPU: its transformer optimizer
    fuses attention, embedding and layer norms, skip connections and GELU biases, then dynamic int8
    per-channel quantizes the fused operators too (QAttention, QEmbedLayerNormalization) as well as
    the MatMuls. A measure of the hardware's int8 floor for feature extraction, beside the plain
    recipe users apply."""
    import json

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from ..quant.apply_plan import quiet_quantizer

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    traced = export_monolithic(model_dir, "feature-extraction", folder / "eager.onnx", attention="eager")
    fused = folder / "fused.onnx"
    optimize_model(str(traced), model_type="bert", num_heads=config["num_attention_heads"],
                   hidden_size=config["hidden_size"]).save_model_to_file(str(fused))
    path = folder / "fused-int8.onnx"
    with quiet_quantizer():  # the fused operators have no shape inference: their outputs are float
        quantize_dynamic(str(fused), str(path), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return path


class MonolithicModel:
    """One onnxruntime session over the whole model, on the same shared thread pool as edgeinfer."""

    def __init__(self, path: Path, threads: int | None = None):
        self.session = open_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, batch: EncodedBatch) -> np.ndarray:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                 "token_type_ids": batch.token_type_ids}
        return self.session.run(None, {k: feeds[k] for k in self.inputs})[0]
