"""A LiteRT int8 variant: the converted fp32 LiteRT file lowered by ai-edge-quantizer, with its own
exit and restart thresholds.

ai-edge-quantizer (the LiteRT project's quantizer) works on a .tflite file, every signature at
once; its `dynamic_wi8_afp32` recipe stores weights as int8 per channel and quantizes activations
on the fly, the LiteRT counterpart of onnxruntime's dynamic int8. A lowered model's confidences
differ from fp32's, so, as for an ONNX variant, its exits and its final answer get thresholds
calibrated against the fp32 full model (quant/variant_thresholds.py), the final one deciding when
the cascade restarts at fp32. The variant is LiteRT-only: it has no ONNX graphs, and the
onnxruntime targets refuse it by name.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..export.exit_quality import cosine_rows
from ..manifest import Manifest, PrecisionVariant
from ..progress import progress_bar
from ..runtime.litert_graphs import LiteRTFile, LiteRTGraph
from ..runtime.package import Package
from ..runtime.sessions import default_threads
from .mixed_precision import MIN_CALIBRATION_TEXTS, full_model
from .output_error import calibration_batches, output_error
from .variant_thresholds import calibrate_variant, feed_lengths, variant_outputs

LITERT_INT8 = "litert-int8"
# LiteRT runs batches row by row, so calibration costs ~15 ms per text for MiniLM. SST-2 dev agreement
# of the cascade at level 0.995 (bench/RESULTS-archive.md): 0.9885 calibrated on 3,000 texts, 0.9954 on 20,000.
CALIBRATION_TEXTS = 20000
RECIPE = "ai-edge-quantizer dynamic_wi8_afp32 (int8 per-channel weights, dynamic int8 activations)"
INT8_FILE = "litert/int8.tflite"


def quantize_litert_file(source: Path, target: Path) -> None:
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise ExportError("the LiteRT int8 variant needs ai-edge-quantizer (pip install 'edgeinfer[export-litert]')") from None
    target.unlink(missing_ok=True)  # never write through a hard link into the package it was copied from
    lowering = quantizer.Quantizer(str(source))
    lowering.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    try:  # its own progress bars and report go nowhere: ours says what is happening
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            lowering.quantize(enable_progress_bar=False, enable_progress_report=False).export_model(str(target), overwrite=True)
    except Exception as err:  # the quantizer's own errors, from deep inside it
        raise ExportError(f"ai-edge-quantizer could not lower {source.name} ({str(err).splitlines()[0][:160]})") from None


def add_litert_int8(staging: Path, manifest: Manifest, texts: list[str]) -> Manifest:
    """Lower the LiteRT fp32 file in `staging` (a package being written) and calibrate the variant."""
    if manifest.model.task != "text-classification":
        raise ExportError("the LiteRT int8 variant is for classifiers (its cascade restarts on the final "
                          "answer's confidence); run embeddings on the fp32 LiteRT graphs")
    if len(texts) < MIN_CALIBRATION_TEXTS:
        raise ExportError(f"the calibration data has {len(texts)} texts; the int8 variant's thresholds need at "
                          f"least {MIN_CALIBRATION_TEXTS} (a few thousand give useful ones)")
    if len(texts) > CALIBRATION_TEXTS:
        texts = [texts[i] for i in sorted(np.random.default_rng(0).choice(len(texts), CALIBRATION_TEXTS, replace=False))]
    with progress_bar(3, "LiteRT int8 variant") as bar:
        quantize_litert_file(staging / manifest.litert.files["fp32"], staging / INT8_FILE)
        bar.update()
        litert = replace(manifest.litert, files={**manifest.litert.files, LITERT_INT8: INT8_FILE})
        manifest = replace(manifest, litert=litert,
                           precision_variants=tuple(v for v in manifest.precision_variants if v.name != LITERT_INT8))
        package = Package(staging, manifest)
        batches = calibration_batches(package, full_model(package), texts)
        files = {name: LiteRTFile(staging / path, default_threads()) for name, path in litert.files.items()}
        graph_of = lambda precision: lambda s: LiteRTGraph(files[precision], litert, s, manifest.tokenizer.pad_id)  # noqa: E731
        per_exit, final = variant_outputs(graph_of(LITERT_INT8), manifest, batches.feeds)
        bar.update()
        speedup = _speedup(graph_of, manifest)
        calibrated = calibrate_variant(manifest, per_exit, final, batches.reference, speedup,
                                       feed_lengths(batches.feeds))
        bar.update()
    agreement = float(np.mean(batches.reference.argmax(-1) == final.argmax(-1)))
    quality = {"recipe": RECIPE, "calibration_examples": int(len(final)), "agreement_with_fp32": round(agreement, 6),
               "output_error": round(output_error(manifest.model.task, batches.reference, final), 8),
               "output_error_kind": "KL", "speedup_measured": round(speedup, 4),
               "mean_logit_cosine_to_fp32": round(float(np.mean(cosine_rows(batches.reference, final))), 6),
               **calibrated.quality(manifest.model.task)}
    variant = PrecisionVariant(name=LITERT_INT8, plan={}, bytes=(staging / INT8_FILE).stat().st_size,
                               quality=quality, thresholds=calibrated.thresholds)
    return replace(manifest, precision_variants=(*manifest.precision_variants, variant))


def _speedup(graph_of, manifest: Manifest, rounds: int = 6, block: int = 8) -> float:
    """fp32 over int8 latency of the full LiteRT graph at 64 tokens (or the nearest bucket), timed
    in alternating blocks: it prices a restart in the variant's blocks."""
    full = manifest.segment("full")
    tokens = manifest.litert.bucket_for(64) or manifest.litert.buckets[-1]
    ids = np.full((1, tokens), manifest.tokenizer.special_ids[0], dtype=np.int64)
    feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_bias": np.zeros(ids.shape, np.float32)}
    graphs = {p: graph_of(p)(full) for p in ("fp32", LITERT_INT8)}
    times: dict[str, list[float]] = {p: [] for p in graphs}
    for _ in range(rounds):
        for precision, graph in graphs.items():
            for i in range(block):
                t0 = time.perf_counter()
                graph.run(None, {k: feeds[k] for k in full.inputs})
                if i >= 2:
                    times[precision].append(time.perf_counter() - t0)
    return float(np.median(times["fp32"]) / np.median(times[LITERT_INT8]))
