"""One weights file for all graphs of a package.

Segments, fused spans and exit heads reuse the same tensors (a fused full-depth graph holds every
block's weights again). Storing each distinct tensor once in `graphs/weights.bin` and pointing every
graph at it through ONNX external data keeps the package the size of one model, whatever graphs
it carries. onnxruntime reads only the tensors a session's graph names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import external_data_helper, numpy_helper

WEIGHTS_FILE = "weights.bin"
INLINE_BELOW_BYTES = 1024  # small tensors stay inside the graph, as onnx's own convention does
ALIGNMENT = 64


def share_weights(graph_paths: list[Path], weights_path: Path) -> None:
    """Move every large initializer of these graphs into one deduplicated file beside them."""
    offsets: dict[str, tuple[int, int]] = {}
    with open(weights_path, "wb") as weights:
        for path in graph_paths:
            model = onnx.load(str(path))
            for tensor in model.graph.initializer:
                # raw bytes as stored: packed types (int4) must not go through numpy's unpacking
                data = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
                if len(data) < INLINE_BELOW_BYTES:
                    continue
                key = f"{tensor.data_type}:{list(tensor.dims)}:{hashlib.sha256(data).hexdigest()}"
                if key not in offsets:
                    position = weights.tell()
                    padding = (-position) % ALIGNMENT
                    weights.write(b"\0" * padding)
                    offsets[key] = (position + padding, len(data))
                    weights.write(data)
                offset, length = offsets[key]
                tensor.raw_data = data  # set_external_data wants raw_data present; it is dropped next
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field)
                external_data_helper.set_external_data(tensor, location=weights_path.name, offset=offset, length=length)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
            onnx.save(model, str(path))
