"""A package's LiteRT graphs behind the call an onnxruntime session answers: `run(None, feeds)`.

The executor (session.py) is written against that one call, so LiteRT needs no second executor.
What differs is hidden here: LiteRT graphs have static shapes, so the token axis is padded up to
the next converted bucket (padding masked by PAD_BIAS in `attention_bias`, exactly as in a padded
batch), batches run row by row (signatures are converted at batch 1), and token-axis outputs are
cut back to the tokens given. Pruning therefore still saves time, one bucket at a time.

`ai_edge_litert` is the interpreter; `tflite_runtime` is accepted where installed instead, but its
last release (2.14) predates the op versions current converters write, so a graph it cannot load
is refused with one line naming the fix.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, PackageError
from ..manifest import PAD_BIAS, TOKEN_AXIS_NAMES, LiteRTGraphs, Segment

INSTALL_HINT = "pip install 'edgeinfer[litert]' (ai-edge-litert)"


def interpreter_class() -> tuple[type, str]:
    """(Interpreter class, the library it came from); ImportError when neither is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise ImportError(f"no LiteRT interpreter is installed; {INSTALL_HINT}") from None


class LiteRTFile:
    """One .tflite file: one interpreter, its signature runners opened on first use.

    An interpreter is not safe to call from two threads at once, so calls on one file take turns.
    """

    def __init__(self, path: Path, threads: int):
        try:
            interpreter, library = interpreter_class()
        except ImportError as err:
            raise InputError(str(err)) from None
        try:
            self._interpreter = interpreter(model_path=str(path), num_threads=threads)
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            hint = f"; {INSTALL_HINT}" if library == "tflite-runtime" else ""
            raise PackageError(f"{library} cannot load {path.name} ({first}){hint}") from None
        self.library = library
        self.lock = threading.Lock()
        self._runners: dict[str, tuple[Any, list[tuple[str, type]], list[str]]] = {}

    def runner(self, signature: str) -> tuple[Any, list[tuple[str, type]], list[str]]:
        """(runner, [(input key, dtype)] in argument order, [output keys] in output order)."""
        found = self._runners.get(signature)
        if found is None:
            try:
                runner = self._interpreter.get_signature_runner(signature)
            except ValueError:
                raise PackageError(f"the LiteRT file has no signature {signature!r}; re-convert the package") from None
            details = runner.get_input_details()
            inputs = sorted(((key, d["dtype"]) for key, d in details.items()), key=lambda kd: _position(kd[0]))
            outputs = sorted(runner.get_output_details(), key=_position)
            found = self._runners[signature] = (runner, inputs, outputs)
        return found


def _position(key: str) -> int:
    """args_3 -> 3, output_1 -> 1: signature tensors are named by position."""
    return int(key.rsplit("_", 1)[1])


class LiteRTGraph:
    """One segment at every bucket of a LiteRT file."""

    def __init__(self, file: LiteRTFile, graphs: LiteRTGraphs, segment: Segment, pad_id: int):
        self.file, self.graphs, self.segment = file, graphs, segment
        self._pads = {"input_ids": pad_id, "attention_bias": PAD_BIAS}

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = self.segment.inputs
        tokens = int(feeds[names[0]].shape[1])
        bucket = self.graphs.bucket_for(tokens)
        if bucket is None:
            raise InputError(f"{tokens} tokens exceed the largest LiteRT bucket ({self.graphs.buckets[-1]}); "
                             f"re-convert with --buckets up to the tokenizer's max_length")
        padded = [self._pad(name, feeds[name], bucket) for name in names]
        runner, inputs, outputs = self.file.runner(self.graphs.signature(self.segment.name, bucket))
        rows: list[list[np.ndarray]] = []
        with self.file.lock:
            for r in range(padded[0].shape[0]):
                got = runner(**{key: value[r:r + 1].astype(dtype, copy=False)
                                for (key, dtype), value in zip(inputs, padded)})
                rows.append([got[key] for key in outputs])
        results = []
        for position, name in enumerate(self.segment.outputs):
            stacked = np.concatenate([row[position] for row in rows]) if len(rows) > 1 else rows[0][position]
            results.append(stacked[:, :tokens] if name in TOKEN_AXIS_NAMES else stacked)
        return results

    def _pad(self, name: str, value: np.ndarray, bucket: int) -> np.ndarray:
        missing = bucket - value.shape[1]
        if missing == 0 or name not in TOKEN_AXIS_NAMES:
            return value
        widths = [(0, 0)] * value.ndim
        widths[1] = (0, missing)
        return np.pad(value, widths, constant_values=self._pads.get(name, 0))
