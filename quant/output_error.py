"""How far a lowered model's output is from the fp32 model's, on calibration batches.

The error is measured where the user sees it: KL divergence of the class probabilities for a
classifier, 1 - cosine of the embedding for an embedding model. The full-depth graph of the
package is the model; its inputs are built with the package's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..export.exit_quality import cosine_rows
from ..runtime.package import Package
from ..runtime.policy import softmax
from ..runtime.sessions import open_session
from ..runtime.tokenize import TextEncoder


@dataclass(frozen=True)
class CalibrationBatches:
    task: str
    feeds: tuple[dict[str, np.ndarray], ...]
    reference: np.ndarray  # fp32 outputs of every input, in batch order

    def outputs(self, model: onnx.ModelProto | bytes) -> np.ndarray:
        return model_outputs(model, self.feeds)

    def error(self, model: onnx.ModelProto | bytes) -> float:
        return output_error(self.task, self.reference, self.outputs(model))


def output_error(task: str, reference: np.ndarray, outputs: np.ndarray) -> float:
    if task == "text-classification":
        p, q = softmax(reference), softmax(outputs)
        kl = np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)
        return max(float(np.mean(kl)), 0.0)  # rounding can make a KL of identical outputs -1e-9
    return float(np.mean(1.0 - cosine_rows(reference, outputs)))


def encode_batches(package: Package, texts: list[str], batch_size: int = 32) -> tuple[dict[str, np.ndarray], ...]:
    """Texts sorted by length and padded per batch (padding masked by attention_bias)."""
    encoder = TextEncoder(package.path(package.manifest.tokenizer.path), package.manifest.tokenizer)
    ordered = sorted(texts, key=len)
    batches = []
    for start in range(0, len(ordered), batch_size):
        batch = encoder.encode(ordered[start:start + batch_size])
        batches.append(batch.span_feeds())
    return tuple(batches)


def calibration_batches(package: Package, full_model: onnx.ModelProto, texts: list[str]) -> CalibrationBatches:
    feeds = encode_batches(package, texts)
    return CalibrationBatches(package.manifest.model.task, feeds, model_outputs(full_model, feeds))


def single_texts(batches: CalibrationBatches, count: int) -> CalibrationBatches:
    """The first `count` texts of padded batches as batches of one, cut to their own tokens."""
    feeds = []
    for feed in batches.feeds:
        for row in range(len(feed["input_ids"])):
            tokens = int((feed["attention_bias"][row] > -1.0).sum())  # padding is on the right
            feeds.append({name: value[row:row + 1, :tokens] if value.ndim == 2 else value[row:row + 1]
                          for name, value in feed.items()})
            if len(feeds) == count:
                return CalibrationBatches(batches.task, tuple(feeds), batches.reference[:count])
    return CalibrationBatches(batches.task, tuple(feeds), batches.reference[:len(feeds)])


def model_outputs(model: onnx.ModelProto | bytes, feeds: tuple[dict[str, np.ndarray], ...]) -> np.ndarray:
    """The model's first output for every batch, concatenated (inputs it does not take are dropped)."""
    graph = open_session(model if isinstance(model, bytes) else model.SerializeToString())
    names = {i.name for i in graph.get_inputs()}
    return np.concatenate([graph.run(None, {k: v for k, v in f.items() if k in names})[0] for f in feeds])
