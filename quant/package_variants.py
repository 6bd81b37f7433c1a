"""Write a precision variant into a package: every segment lowered by one plan, thresholds recalibrated.

The new graphs sit beside the fp32 ones (`graphs/block_03.int8.onnx`), and all graphs are re-shared
into one weights file, so fp32 nodes a mixed plan keeps cost no extra bytes. The package is rebuilt
in a staging folder and renamed into place (package_writer.py): a reader sees the old package or the
new one, never half of it.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError
from ..export.exit_quality import cosine_rows
from ..export.package_writer import discard, finalize, prepare_staging
from ..export.shared_weights import WEIGHTS_FILE, share_weights
from ..manifest import Manifest, PrecisionVariant, Variant
from ..progress import progress_bar
from ..runtime.package import Package
from .apply_plan import apply_plan
from .output_error import CalibrationBatches, output_error, single_texts
from .smoothing import NONE, Smoothing
from .variant_thresholds import calibrate_variant, feed_lengths, onnx_graphs, variant_outputs
from .weight_nodes import weight_nodes

VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def exit_precision(plan: dict[str, str]) -> str:
    """Exit heads are a few small matrices: they follow the plan's most common lowering, at 8 bits
    or more (int4 saves nothing there and its kernels are slower here)."""
    lowered = Counter(c for c in plan.values() if c != "fp32")
    if not lowered:
        return "fp32"
    common = lowered.most_common(1)[0][0]
    return "int8-channel" if common.startswith("int4") else common


def add_precision_variant(package: Package, output: Path, name: str, plan: dict[str, str],
                          batches: CalibrationBatches, speedup: float, record: dict, force: bool = False,
                          smoothing: Smoothing = NONE) -> Manifest:
    """plan: precision by node name of the full-depth graph (quant/mixed_precision.py); smoothing:
    what its int8 nodes take (smoothing.py), the same in every graph since it goes by weight digest."""
    manifest = package.manifest
    if not VARIANT_NAME.match(name) or name == "fp32":
        raise InputError(f"variant name {name!r} must be 1-32 lowercase letters, digits or '-', and not fp32")
    if any(v.name == name for v in manifest.precision_variants) and not force:
        raise InputError(f"the package already has a variant {name!r}; pass --force to replace it")
    same_place = output.resolve() == package.root.resolve()
    staging = prepare_staging(output, force or same_place)
    try:
        return _write(package, staging, output, name, plan, batches, speedup, record, smoothing)
    except BaseException:
        discard(staging)
        raise


def _write(package: Package, staging: Path, output: Path, name: str, plan: dict[str, str],
           batches: CalibrationBatches, speedup: float, record: dict, smoothing: Smoothing) -> Manifest:
    manifest = _without_variant(package.manifest, name)
    shutil.copytree(package.path(manifest.tokenizer.path).parent, staging / "tokenizer", dirs_exist_ok=True)
    for litert_file in (manifest.litert.files.values() if manifest.litert is not None else ()):
        (staging / litert_file).parent.mkdir(parents=True, exist_ok=True)  # LiteRT graphs move over unchanged
        shutil.copy2(package.path(litert_file), staging / litert_file)
    span = manifest.full_depth()
    full = onnx.load(str(package.path(span.graph("fp32"))))
    by_digest = {n.digest: plan.get(n.name, "fp32") for n in weight_nodes(full)}
    unknown = sorted(set(plan) - {n.name for n in weight_nodes(full)})
    if unknown:
        raise InputError(f"the plan names nodes this model does not have: {unknown[:3]}; "
                         f"node names come from `edgeinfer quantize --report`")
    for_exits = exit_precision(plan)
    for exit_head in manifest.exits:  # an exit's weights, alone or inside a stage span, follow for_exits
        exit_graph = onnx.load(str(package.path(manifest.segment(exit_head.segment).graph("fp32"))))
        for node in weight_nodes(exit_graph):
            by_digest.setdefault(node.digest, for_exits)  # a weight shared with the backbone keeps its plan
    segments = []
    graphs: list[Path] = []
    with progress_bar(2 * sum(len(s.variants) for s in manifest.segments) + 2, f"writing variant {name}") as bar:
        for segment in manifest.segments:
            for variant in segment.variants:  # existing graphs move over with their weights inline
                model = onnx.load(str(package.path(variant.path)))
                onnx.save(model, str(staging / variant.path))
                graphs.append(staging / variant.path)
                bar.update()
            model = onnx.load(str(package.path(segment.graph("fp32"))))
            lowered = apply_plan(model, by_digest, smoothing)
            path = f"graphs/{Path(segment.graph('fp32')).stem}.{name}.onnx"
            onnx.save(lowered, str(staging / path))
            graphs.append(staging / path)
            segments.append(replace(segment, variants=(*segment.variants, Variant(name, path))))
            bar.update()
        share_weights(graphs, staging / "graphs" / WEIGHTS_FILE)
        bar.update()
        manifest = replace(manifest, segments=tuple(segments))
        # one text at a time, as requests run: dynamic int8's per-tensor range depends on the batch
        alone = single_texts(batches, len(batches.reference))
        per_exit, final = variant_outputs(onnx_graphs(staging, name), manifest, alone.feeds)
        calibrated = calibrate_variant(manifest, per_exit, final, alone.reference, speedup,
                                       feed_lengths(alone.feeds))
        bar.update()
    variant_bytes = len(apply_plan(full, by_digest, smoothing).SerializeToString())
    quality = {"calibration_examples": int(len(final)), **_closeness(manifest.model.task, alone.reference, final),
               "output_error": round(output_error(manifest.model.task, alone.reference, final), 8),
               "output_error_kind": "KL" if manifest.model.task == "text-classification" else "1 - cosine",
               **record, **calibrated.quality(manifest.model.task)}
    variant = PrecisionVariant(name=name, plan={k: v for k, v in plan.items() if v != "fp32"},
                               bytes=variant_bytes, quality=quality, thresholds=calibrated.thresholds)
    manifest = replace(manifest, precision_variants=(*manifest.precision_variants, variant))
    return finalize(staging, output, manifest)


def _closeness(task: str, reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    if task == "text-classification":
        return {"agreement_with_fp32": round(float(np.mean(reference.argmax(-1) == outputs.argmax(-1))), 6)}
    return {"mean_cosine_to_fp32": round(float(np.mean(cosine_rows(reference, outputs))), 6)}


def _without_variant(manifest: Manifest, name: str) -> Manifest:
    """The manifest with an earlier variant of this name removed (it is being replaced)."""
    segments = tuple(replace(s, variants=tuple(v for v in s.variants if v.precision != name))
                     for s in manifest.segments)
    kept = tuple(v for v in manifest.precision_variants if v.name != name)
    return replace(manifest, segments=segments, precision_variants=kept)
