"""Is int8 *static* quantization (QDQ, activation ranges calibrated ahead) worth a candidate here?
It is the one int8 lowering that quant/ does not offer; this measures it
against int8 dynamic per-channel on the SST-2 model's fused graph, same MatMuls, same process.

    python -m edgeinfer.bench.studies.static_int8 [--package ~/.cache/edgeinfer/bench/sst2-heads.edge]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

from ...export.calibration_data import read_examples
from ...runtime.policy import Policy
from ...runtime.load import load
from ...runtime.sessions import open_session
from .sst2_runtime import add_sst2_arguments

CALIBRATION_TEXTS = 64
EVAL_TEXTS = 200


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sst2_arguments(parser)
    args = parser.parse_args(argv)
    session = load(args.package, policy=Policy.off())
    full = Path(args.package) / "graphs" / "full.onnx"

    def feeds(text: str) -> dict:
        batch = session.encoder.encode([text])
        return {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids,
                "attention_bias": np.zeros(batch.input_ids.shape, np.float32)}

    calibration = [feeds(t) for t in list(read_examples(Path(args.calib), None).texts)[:CALIBRATION_TEXTS]]
    model = onnx.load(str(full), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    with tempfile.TemporaryDirectory() as tmp:
        static, dynamic = Path(tmp) / "static.onnx", Path(tmp) / "dynamic.onnx"
        quantize_static(str(full), str(static), _Feeds(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, nodes_to_quantize=matmuls,
                        op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax)
        quantize_dynamic(str(full), str(dynamic), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_quantize=matmuls, op_types_to_quantize=["MatMul"])
        graphs = {"fp32": open_session(full), "int8 dynamic per-channel": open_session(dynamic),
                  "int8 static QDQ (MinMax, 64 texts)": open_session(static)}
        texts = list(read_examples(Path(args.data), None).texts)[:EVAL_TEXTS]
        for text in texts[:20]:
            for graph in graphs.values():
                graph.run(None, feeds(text))
        times = {k: [] for k in graphs}
        labels = {k: [] for k in graphs}
        for repeat in range(2):
            for text in texts:
                feed = feeds(text)
                for name, graph in graphs.items():
                    t0 = time.perf_counter()
                    logits = graph.run(None, feed)[0]
                    times[name].append((time.perf_counter() - t0) * 1000)
                    if repeat == 0:
                        labels[name].append(int(logits[0].argmax()))
    print(f"{len(matmuls)} weight MatMuls lowered; {len(texts)} SST-2 dev sentences x 2 interleaved repeats")
    for name in graphs:
        agreement = np.mean(np.array(labels[name]) == np.array(labels["fp32"]))
        print(f"{name}: mean {np.mean(times[name]):.2f} ms ({np.mean(times[name]) / np.mean(times['fp32']):.3f}x fp32), "
              f"agreement with fp32 {agreement:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
