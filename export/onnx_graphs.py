"""PyTorch segment -> ONNX file, checked, with dynamic batch and sequence axes.

The TorchScript exporter (`dynamo=False`) is used: it measured 15x faster (docs/platform-facts.md) than the
dynamo exporter on a tiny BERT with outputs equally close, and export time matters for tests.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import onnx
import torch

from ..errors import ExportError

OPSET = 17

DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "token_type_ids": {0: "batch", 1: "sequence"},
    "hidden": {0: "batch", 1: "sequence"},
    "attention_bias": {0: "batch", 1: "sequence"},
    "next_hidden": {0: "batch", 1: "sequence"},
    "token_importance": {0: "batch", 1: "sequence"},
    "cls_attention": {0: "batch", 1: "sequence"},
    "protected": {0: "batch", 1: "sequence"},
    "keep_tokens": {},
    "logits": {0: "batch"},
    "embedding": {0: "batch"},
}


@dataclass(frozen=True)
class GraphJob:
    """One graph to export: a segment, or a span of consecutive segments (`covers`)."""

    name: str
    kind: str
    index: int
    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    covers: tuple[str, ...] = ()
    ranks_by: str | None = None  # a graph that prunes inside: the token score it ranks by


@contextlib.contextmanager
def tracer_warnings_ignored() -> Iterator[None]:
    """The TorchScript tracer warns about every data-dependent Python branch it records as a
    constant (shape checks inside Hugging Face modules): expected here, since the graphs are checked
    against PyTorch afterwards. Every other warning still reaches the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # shapes traced as tensors
        yield


def export_graph(module: torch.nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                 output_names: list[str], path: Path,
                 axes: dict[str, dict[int, str]] | None = None) -> tuple[list[str], list[str]]:
    """Export and check one graph; returns the input and output names the file really has.

    axes: the dynamic axes of each name (DYNAMIC_AXES, the encoder's, by default)."""
    axes = axes or DYNAMIC_AXES
    module.eval()
    with tracer_warnings_ignored(), torch.no_grad():
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes={n: axes[n] for n in input_names + output_names},
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path.name} failed onnx.checker: {str(err).splitlines()[0]}") from None
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]
