"""A manifest whose fields each passed their checks (manifest_reading.py) must also hold together:
what one part names must exist in another, and the calibration figures must be possible. Each
refusal is one line naming what disagrees.

No dependency beyond the standard library: the runtime reads this module.
"""

from __future__ import annotations

from .errors import PackageError
from .manifest import WHOLE, ExitThresholds, Manifest


def check_consistency(manifest: Manifest) -> None:
    """The parsed fields agree with each other: segments, exits, thresholds, variants and LiteRT graphs
    name what exists, and every level's figures are ones calibration could have produced."""
    if (manifest.model.task == "text-generation") != (manifest.decoder is not None):
        raise PackageError("manifest: a text-generation package needs the decoder section, and only it")
    names = [s.name for s in manifest.segments]
    if len(set(names)) != len(names):
        raise PackageError("manifest: segment names repeat")
    first = [s for s in manifest.segments if s.kind in ("embed", WHOLE)]
    if first and ("token_type_ids" in first[0].inputs) != manifest.tokenizer.uses_token_type_ids:
        raise PackageError(f"manifest: tokenizer.uses_token_type_ids is {manifest.tokenizer.uses_token_type_ids}, "
                           f"but segment {first[0].name!r} {'takes' if 'token_type_ids' in first[0].inputs else 'does not take'} "
                           f"token_type_ids; re-export the package")
    if manifest.is_whole:
        if len(manifest.segments) != 1 or manifest.exits or manifest.exit_thresholds or manifest.decoder:
            raise PackageError("manifest: a whole-model package holds its one graph and nothing else "
                               "(no other segments, exits or thresholds); re-export it")
        return
    kinds = [s.kind for s in manifest.segments]
    if kinds.count("embed") != 1 or kinds.count("head") != 1:
        raise PackageError("manifest: a package needs exactly one embed and one head segment")
    blocks = sorted(s.index for s in manifest.segments if s.kind == "block")
    if blocks != list(range(manifest.model.num_blocks)):
        raise PackageError(f"manifest: blocks {blocks} do not match num_blocks={manifest.model.num_blocks}")
    for span in (s for s in manifest.segments if s.kind == "span"):
        if not span.covers or any(name not in names for name in span.covers):
            raise PackageError(f"manifest: span {span.name!r} covers unknown segments")
    for exit_head in manifest.exits:
        if exit_head.segment not in names:
            raise PackageError(f"manifest: exit after block {exit_head.after_block} names unknown segment")
        if exit_head.after_block >= manifest.model.num_blocks:
            raise PackageError(f"manifest: exit after block {exit_head.after_block} is not before the last block")
    for level in manifest.exit_thresholds:
        if len(level.thresholds) != len(manifest.exits) or len(level.exit_shares) != len(manifest.exits) + 1:
            raise PackageError(f"manifest: thresholds for agreement {level.agreement} do not match the exits")
        _check_level(manifest, level, f"exit_thresholds (agreement {level.agreement})", restart=False)
    if manifest.litert is not None:
        unknown = [name for name in manifest.litert.segments if name not in names]
        if unknown:
            raise PackageError(f"manifest: litert.segments names unknown segments {unknown[:3]}")
        if manifest.decoder is not None:
            raise PackageError("manifest: LiteRT graphs are for encoder packages only")
    screen = manifest.decoder.head_screen if manifest.decoder is not None else None
    if screen is not None:
        if screen.precision not in [v.name for v in manifest.precision_variants]:
            raise PackageError(f"manifest: decoder.head_screen names precision {screen.precision!r}, "
                               f"which the package has no variant for")
        listed = {f.path: f.bytes for f in manifest.files}
        expected = 4 * 2 * manifest.decoder.vocab_size
        if listed and listed.get(screen.path) != expected:
            raise PackageError(f"manifest: decoder.head_screen.path must be a listed file of {expected} bytes")
        rows = 4 * manifest.decoder.vocab_size * manifest.model.hidden_size
        if listed and screen.weight_offset + rows > listed.get(screen.weight_file, -1):
            raise PackageError("manifest: decoder.head_screen.weight_file/offset point outside the package's files")
    for variant in manifest.precision_variants:
        if variant.name == "fp32" or [v.name for v in manifest.precision_variants].count(variant.name) > 1:
            raise PackageError(f"manifest: precision variant name {variant.name!r} is reserved or repeated")
        lacking = [s.name for s in manifest.segments if variant.name not in (v.precision for v in s.variants)]
        litert_only = manifest.litert is not None and variant.name in manifest.litert.files
        if lacking and not litert_only:
            raise PackageError(f"manifest: precision variant {variant.name!r} has no graph for {lacking}")
        for level in variant.thresholds:
            if len(level.thresholds) != len(manifest.exits) + 1 or len(level.exit_shares) != len(manifest.exits) + 2:
                raise PackageError(f"manifest: variant {variant.name!r} thresholds for agreement "
                                   f"{level.agreement} need one per exit plus the restart threshold, and a share "
                                   f"for each and for the restarts")
            _check_level(manifest, level, f"variant {variant.name!r} (agreement {level.agreement})", restart=True)


# the values each exit confidence takes (a threshold outside them would make an exit always or never answer)
_CONFIDENCE_RANGE = {"max_prob": (0.0, 1.0), "top2_margin": (0.0, 1.0), "consecutive_cosine": (-1.0, 1.0)}
_ROUNDING = 1e-3


def _check_level(manifest: Manifest, level: ExitThresholds, where: str, restart: bool) -> None:
    """A level's figures are what calibration could have measured: each threshold inside its
    confidence's range (the restart threshold inside [-1, 1]), one per exit in every length range,
    exit shares that add up to one, and (for fp32 exits) a mean depth the model has; a variant's
    mean depth counts its restarts' cost in blocks too, so may pass the model's depth."""
    ranges = [_CONFIDENCE_RANGE[e.confidence] for e in manifest.exits] + ([(-1.0, 1.0)] if restart else [])
    for row in (level.thresholds, *(r.thresholds for r in level.by_length)):
        if len(row) != len(ranges):
            raise PackageError(f"manifest: {where} has {len(row)} thresholds in a length range, not {len(ranges)}")
        for value, (low, high) in zip(row, ranges):
            if value is not None and not low - _ROUNDING <= value <= high + _ROUNDING:
                raise PackageError(f"manifest: {where} has a threshold of {value}, outside the confidence's "
                                   f"range [{low}, {high}]; re-calibrate with `edgeinfer thresholds`")
    if level.calibration_agreement < level.agreement - _ROUNDING:
        raise PackageError(f"manifest: {where} agreed on {level.calibration_agreement} of its calibration inputs, "
                           f"less than the level it claims; re-calibrate with `edgeinfer thresholds`")
    if level.exit_shares and abs(sum(level.exit_shares) - 1.0) > _ROUNDING:
        raise PackageError(f"manifest: {where} exit shares add up to {sum(level.exit_shares):.4f}, not 1")
    if not restart and level.exit_shares and not 1.0 - _ROUNDING <= level.expected_mean_depth <= manifest.model.num_blocks + _ROUNDING:
        raise PackageError(f"manifest: {where} expects a mean depth of {level.expected_mean_depth}, outside "
                           f"[1, {manifest.model.num_blocks}] blocks")
