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


def export_monolithic(model_dir: str, task: str, path: Path) -> Path:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    from ..export.onnx_graphs import tracer_warnings_ignored

    loader = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    model = loader.from_pretrained(model_dir).eval()
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


class MonolithicModel:
    """One onnxruntime session over the whole model, on the same shared thread pool as edgeinfer."""

    def __init__(self, path: Path, threads: int | None = None):
        self.session = open_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, batch: EncodedBatch) -> np.ndarray:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                 "token_type_ids": batch.token_type_ids}
        return self.session.run(None, {k: feeds[k] for k in self.inputs})[0]
