"""The values a graph's inner tensors take on the calibration batches, padding left out.

Both the value-driven proxy (value_stats.py) and smoothing (smoothing.py) read the inputs of the
weight nodes: one session over the graph with those tensors added as outputs serves either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from ..runtime.sessions import open_session


def real_rows(model: onnx.ModelProto, tensors: Sequence[str],
              feeds: Sequence[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Per batch, each tensor's rows [tokens, channels] for the real tokens only (attention_bias
    marks padding), or all its rows when it is not laid out per token."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in existing)
    graph = open_session(probe.SerializeToString())
    feed_names = {i.name for i in graph.get_inputs()}
    for feed in feeds:
        mask = feed["attention_bias"] > -1.0
        values = graph.run(list(tensors), {k: v for k, v in feed.items() if k in feed_names})
        yield {name: value[mask] if value.ndim == 3 and value.shape[:2] == mask.shape
               else value.reshape(-1, value.shape[-1]) for name, value in zip(tensors, values)}
