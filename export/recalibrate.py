"""`edgeinfer thresholds`: calibrate a package's exit thresholds again, on texts like the traffic
it will serve.

Agreement is measured against the package's own full model, so the texts need no labels: a user
who exported on what they had (SST-2's training phrases, say) calibrates later on a sample of
what the application really sees (whole sentences). The fp32 exits and every ONNX precision
variant's cascade are recalibrated with the package's own graphs; the rest of the package is
copied unchanged and the manifest is replaced atomically.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import InputError
from ..manifest import Manifest
from ..quant.output_error import encode_batches
from ..quant.variant_thresholds import calibrate_variant, feed_lengths, onnx_graphs, variant_outputs
from ..runtime.package import open_package
from ..runtime.encoder.whole_model import refuse_whole
from ..runtime.policy import EMBEDDING_AGREES_AT
from .exit_quality import judge
from .package_writer import rewrite_manifest
from .thresholds import AGREEMENT_LEVELS, calibrate_level, threshold_record

MIN_TEXTS = 50


def recalibrate_thresholds(package_path: Path, texts: list[str], source: str, output: Path | None = None,
                           force: bool = False) -> Manifest:
    if len(texts) < MIN_TEXTS:
        raise InputError(f"threshold calibration needs at least {MIN_TEXTS} texts; got {len(texts)} "
                         f"(a few hundred certify 0.95-0.99, a few thousand 0.995)")
    package = open_package(package_path)
    manifest = package.manifest
    if manifest.model.task == "text-generation":
        raise InputError("`edgeinfer thresholds` calibrates encoder exits; a decoder's exits are "
                         "calibrated at export from --calib prompts")
    refuse_whole(manifest, "there are no exit thresholds to calibrate")
    if not manifest.exits:
        raise InputError(f"{package_path} has no exits to calibrate; export it with --exits")
    feeds = encode_batches(package, texts)
    per_exit, final = variant_outputs(onnx_graphs(package.root, "fp32"), manifest, feeds)
    confidence, agrees = judge(manifest.model.task, per_exit, final)
    blocks = manifest.model.num_blocks
    lengths = feed_lengths(feeds)
    levels = tuple(calibrate_level(confidence, agrees, sorted(per_exit), blocks, level, lengths)
                   for level in AGREEMENT_LEVELS)
    onnx_variants = {v.precision for s in manifest.segments for v in s.variants}
    variants = []
    for variant in manifest.precision_variants:
        if variant.thresholds and variant.name in onnx_variants:
            lowered_exits, lowered_final = variant_outputs(onnx_graphs(package.root, variant.name), manifest, feeds)
            calibrated = calibrate_variant(manifest, lowered_exits, lowered_final, final, variant.speedup or 1.0, lengths)
            variant = replace(variant, thresholds=calibrated.thresholds,
                              quality={**variant.quality, **calibrated.quality(manifest.model.task)})
        variants.append(variant)
    earlier = manifest.calibration.get("thresholds", {})
    record = threshold_record(source, len(texts), earlier.get("confidence", "max_prob"), lengths)
    if manifest.model.task != "text-classification":  # what judge() just counted as agreeing
        record["embedding_agreement_cosine"] = EMBEDDING_AGREES_AT
    new_manifest = replace(manifest, exit_thresholds=levels, precision_variants=tuple(variants),
                           calibration={**manifest.calibration, "thresholds": record})
    return rewrite_manifest(package.root, output or package_path, new_manifest, force)
