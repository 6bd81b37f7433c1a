"""Reading a manifest: every field checked against the schema (docs/manifest.md) as it is parsed, then
the whole checked for consistency, so that a runtime can trust what it read. Each refusal is one
line naming the field.

No dependency beyond the standard library: the runtime reads this module.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, TypeVar

from .errors import PackageError
from .manifest_consistency import check_consistency
from .manifest import (CONFIDENCE_KINDS, FORMAT_NAME, MAX_MANIFEST_BYTES, SCHEMA_VERSION, SEGMENT_KINDS, TASKS,
                       TOKEN_SCORES, DecoderFacts, ExitHead, ExitThresholds, FileEntry, HeadScreen, LengthThresholds,
                       LiteRTGraphs, Manifest, ModelFacts, OperatingPoint, PrecisionVariant, Segment, TokenizerSpec,
                       Variant)

T = TypeVar("T")


def manifest_from_json(text: str | bytes) -> Manifest:
    """The manifest a package holds, validated field by field (docs/manifest.md), or one line on what is wrong."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise PackageError(f"manifest is {len(text)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    try:
        document = json.loads(text)
        # a \udXXX escape decodes to a lone surrogate, which no path, tokenizer or file system takes
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PackageError("manifest holds a lone surrogate (a \\udXXX escape without its pair), which is not "
                           "text; re-export the package") from None
    except (ValueError, RecursionError) as err:
        raise PackageError(f"manifest is not valid JSON ({_short(err)}); re-export the package") from None
    return _parse_manifest(document)


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__


def _at(where: str, key: str) -> str:
    """A field's place for messages: "model.labels" (the top level is "manifest", left unsaid).
    A key a damaged manifest made up is quoted, so a newline inside it cannot break the one-line
    message."""
    shown = key if key.isprintable() and key.strip() == key else repr(key)
    return shown if where in ("", "manifest") else f"{where}.{shown}" if key else where


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise PackageError(f"manifest: {where} must be an object")
    if key not in obj:
        raise PackageError(f"manifest: {_at(where, key)} is missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    is_bool = isinstance(value, bool)
    if (is_bool and bool not in kinds) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise PackageError(f"manifest: {_at(where, key)} must be {names}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PackageError(f"manifest: {_at(where, key)} must be finite")
    if float in kinds and isinstance(value, int) and not is_bool and abs(value) > 2**63:
        raise PackageError(f"manifest: {_at(where, key)} is a number too large to be meant")
    return value


def _int(obj: Any, key: str, where: str, low: int = 0, high: int = 2**31) -> int:
    value = _need(obj, key, int, where)
    if not low <= value <= high:
        raise PackageError(f"manifest: {_at(where, key)}={value} is outside [{low}, {high}]")
    return value


def _float(obj: Any, key: str, where: str, low: float, high: float) -> float:
    value = float(_need(obj, key, (int, float), where))
    if not low <= value <= high:
        raise PackageError(f"manifest: {_at(where, key)}={value} is outside [{low}, {high}]")
    return value


def _str(obj: Any, key: str, where: str, choices: tuple[str, ...] | None = None) -> str:
    value = _need(obj, key, str, where)
    if choices is not None and value not in choices:
        raise PackageError(f"manifest: {_at(where, key)}={value!r} is not one of {list(choices)}")
    return value


def _list(obj: Any, key: str, where: str, parse: Callable[[Any, str], T], limit: int = 10_000) -> tuple[T, ...]:
    items = _need(obj, key, list, where)
    if len(items) > limit:
        raise PackageError(f"manifest: {_at(where, key)} has {len(items)} items, over the limit of {limit}")
    return tuple(parse(item, f"{_at(where, key)}[{i}]") for i, item in enumerate(items))


def _record(obj: Any, key: str, where: str = "") -> dict[str, Any]:
    value = obj.get(key, {}) if isinstance(obj, dict) else {}
    if not isinstance(value, dict):
        raise PackageError(f"manifest: {_at(where, key)} must be an object")
    return value


def _parse_calibration(document: Any) -> dict[str, Any]:
    """The calibration record is a report, kept as written, but the parts the runtime reads (the
    thresholds' input lengths and guarantees, the operating points' cost figures) are checked here."""
    record = _record(document, "calibration")
    thresholds = _record(record, "thresholds", "calibration")
    where = "calibration.thresholds"
    lengths = _record(thresholds, "lengths", where) if thresholds.get("lengths") is not None else {}
    for key in sorted({*lengths, "min", "p10", "p50", "p90", "max"}) if lengths else ():
        _int(lengths, key, f"{where}.lengths", 0, 2**31)
    guarantee = _record(thresholds, "guarantee", where)
    for key in guarantee:
        _str(guarantee, key, f"{where}.guarantee")
    if "embedding_agreement_cosine" in thresholds:
        _float(thresholds, "embedding_agreement_cosine", where, 0.0, 1.0)
    points = _record(record, "operating_points", "calibration")
    for key in ("mean_tokens", "full_model_ms"):
        if points.get(key) is not None:
            _float(points, key, "calibration.operating_points", 0.0, 1e9)
    return record


def _check_version(document: Any) -> str:
    if not isinstance(document, dict):
        raise PackageError("manifest: top level must be a JSON object")
    if document.get("format") != FORMAT_NAME:
        raise PackageError(f"manifest: format must be {FORMAT_NAME!r}; this is not an edge package")
    version = _str(document, "schema_version", "manifest")
    if re.fullmatch(r"\d{1,4}\.\d{1,4}", version) is None:
        raise PackageError(f"manifest: schema_version {version!r} is not MAJOR.MINOR; re-export the package")
    major = int(version.split(".")[0])
    supported = int(SCHEMA_VERSION.split(".")[0])
    if major > supported:
        raise PackageError(f"package schema {version} is newer than this edgeinfer reads "
                           f"({SCHEMA_VERSION}); upgrade edgeinfer")
    if major < supported:
        raise PackageError(f"package schema {version} is older than this edgeinfer reads "
                           f"({SCHEMA_VERSION}); re-export the package")
    return version


def _parse_model(obj: Any, where: str) -> ModelFacts:
    labels = obj.get("labels") if isinstance(obj, dict) else None
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise PackageError(f"manifest: {where}.labels must be a list of strings or null")
    embedding_dim = obj.get("embedding_dim") if isinstance(obj, dict) else None
    if embedding_dim is not None:
        embedding_dim = _int(obj, "embedding_dim", where, 1, 1 << 20)
    return ModelFacts(
        family=_str(obj, "family", where),
        model_type=_str(obj, "model_type", where),
        task=_str(obj, "task", where, TASKS),
        num_blocks=_int(obj, "num_blocks", where, 1, 1024),
        hidden_size=_int(obj, "hidden_size", where, 1, 1 << 16),
        num_heads=_int(obj, "num_heads", where, 1, 1024),
        labels=tuple(labels) if labels is not None else None,
        embedding_dim=embedding_dim,
        normalize_embedding=_need(obj, "normalize_embedding", bool, where),
        source=_str(obj, "source", where),
    )


def _parse_tokenizer(obj: Any, where: str) -> TokenizerSpec:
    return TokenizerSpec(
        path=_str(obj, "path", where),
        max_length=_int(obj, "max_length", where, 2, 1 << 16),
        uses_token_type_ids=_need(obj, "uses_token_type_ids", bool, where),
        pad_id=_int(obj, "pad_id", where),
        special_ids=_list(obj, "special_ids", where, lambda x, w: _int({"id": x}, "id", w)),
    )


def _parse_operating_point(obj: Any, where: str) -> OperatingPoint:
    policy = _need(obj, "policy", dict, where)
    accuracy = obj.get("accuracy")
    return OperatingPoint(name=_str(obj, "name", where), policy=policy,
                          agreement=_float(obj, "agreement", where, 0.0, 1.0),
                          agreement_bound=_float(obj, "agreement_bound", where, 0.0, 1.0),
                          relative_latency=_float(obj, "relative_latency", where, 0.0, 1e6),
                          mean_depth=_float(obj, "mean_depth", where, 0.0, 1e6),
                          accuracy=None if accuracy is None else _float(obj, "accuracy", where, 0.0, 1.0))


def _parse_decoder(obj: Any, where: str) -> DecoderFacts:
    bos = obj.get("bos_id")
    return DecoderFacts(
        num_kv_heads=_int(obj, "num_kv_heads", where, 1, 1024),
        head_dim=_int(obj, "head_dim", where, 1, 4096),
        vocab_size=_int(obj, "vocab_size", where, 2, 1 << 24),
        max_positions=_int(obj, "max_positions", where, 1, 1 << 24),
        eos_ids=_list(obj, "eos_ids", where, lambda x, w: _int({"id": x}, "id", w), limit=64),
        bos_id=None if bos is None else _int(obj, "bos_id", where),
        prompt_prefix=_str(obj, "prompt_prefix", where),
        prompt_suffix=_str(obj, "prompt_suffix", where),
        kv_bytes_per_token=_int(obj, "kv_bytes_per_token", where, 1, 1 << 40),
        embedding_file=_str(obj, "embedding_file", where) if obj.get("embedding_file") is not None else None,
        embedding_offset=_int(obj, "embedding_offset", where, 0, 1 << 62) if obj.get("embedding_offset") is not None else None,
        head_screen=None if obj.get("head_screen") is None else _parse_head_screen(
            _need(obj, "head_screen", dict, where), f"{where}.head_screen"),
    )


def _parse_head_screen(obj: Any, where: str) -> HeadScreen:
    return HeadScreen(precision=_str(obj, "precision", where), path=_str(obj, "path", where),
                      block_size=_int(obj, "block_size", where, 1, 1 << 16),
                      weight_file=_str(obj, "weight_file", where), weight_offset=_int(obj, "weight_offset", where, 0, 1 << 62))


def _parse_litert(obj: Any, where: str) -> LiteRTGraphs:
    files = _need(obj, "files", dict, where)
    if not files or len(files) > 64 or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise PackageError(f"manifest: {where}.files must map precision names to .tflite paths")
    if "fp32" not in files:
        raise PackageError(f"manifest: {where}.files has no fp32 file")
    buckets = _list(obj, "buckets", where, lambda x, w: _int({"n": x}, "n", w, 1, 1 << 16), limit=64)
    if not buckets or list(buckets) != sorted(set(buckets)):
        raise PackageError(f"manifest: {where}.buckets must be increasing token counts")
    return LiteRTGraphs(files=dict(files), buckets=buckets,
                        segments=_list(obj, "segments", where, lambda x, w: _str({"n": x}, "n", w)))


def _parse_variant(obj: Any, where: str) -> Variant:
    resident = obj.get("resident_bytes") if isinstance(obj, dict) else None
    return Variant(precision=_str(obj, "precision", where), path=_str(obj, "path", where),
                   resident_bytes=None if resident is None else _int(obj, "resident_bytes", where, high=2**40))


def _parse_segment(obj: Any, where: str) -> Segment:
    names = lambda key: _list(obj, key, where, lambda x, w: _str({"n": x}, "n", w))  # noqa: E731
    segment = Segment(
        name=_str(obj, "name", where),
        kind=_str(obj, "kind", where, SEGMENT_KINDS),
        index=_int(obj, "index", where, 0, 1024),
        inputs=names("inputs"),
        outputs=names("outputs"),
        variants=_list(obj, "variants", where, _parse_variant),
        covers=_list(obj, "covers", where, lambda x, w: _str({"n": x}, "n", w)) if "covers" in obj else (),
        ranks_by=_str(obj, "ranks_by", where, TOKEN_SCORES) if obj.get("ranks_by") is not None else None,
    )
    if not any(v.precision == "fp32" for v in segment.variants):
        raise PackageError(f"manifest: {where} ({segment.name}) has no fp32 variant")
    return segment


def _parse_exit(obj: Any, where: str) -> ExitHead:
    return ExitHead(
        after_block=_int(obj, "after_block", where, 1, 1024),
        segment=_str(obj, "segment", where),
        confidence=_str(obj, "confidence", where, CONFIDENCE_KINDS),
    )


def _optional_float(value: Any, where: str) -> float | None:
    if value is None:
        return None
    return float(_need({"": value}, "", (int, float), where))


def _parse_thresholds(obj: Any, where: str) -> ExitThresholds:
    raw = _need(obj, "thresholds", list, where)
    return ExitThresholds(
        agreement=_float(obj, "agreement", where, 0.0, 1.0),
        thresholds=tuple(_optional_float(v, f"{where}.thresholds[{i}]") for i, v in enumerate(raw)),
        exit_shares=_list(obj, "exit_shares", where, lambda x, w: _float({"share": x}, "share", w, 0.0, 1.0)),
        expected_mean_depth=_float(obj, "expected_mean_depth", where, 0.0, 1e6),
        calibration_agreement=_float(obj, "calibration_agreement", where, 0.0, 1.0),
        by_length=tuple(_list(obj, "by_length", where, _parse_length_thresholds)) if "by_length" in obj else (),
    )


def _parse_length_thresholds(obj: Any, where: str) -> LengthThresholds:
    raw = _need(obj, "thresholds", list, where)
    limit = obj.get("max_tokens") if isinstance(obj, dict) else None
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise PackageError(f"manifest: {where}.max_tokens must be a positive integer or null")
    return LengthThresholds(
        max_tokens=limit,
        thresholds=tuple(_optional_float(v, f"{where}.thresholds[{i}]") for i, v in enumerate(raw)),
        examples=int(_need(obj, "examples", int, where)),
    )


def _parse_precision_variant(obj: Any, where: str) -> PrecisionVariant:
    plan = _need(obj, "plan", dict, where)
    if len(plan) > 100_000 or not all(isinstance(k, str) and isinstance(v, str) for k, v in plan.items()):
        raise PackageError(f"manifest: {where}.plan must map node names to precision names")
    return PrecisionVariant(
        name=_str(obj, "name", where),
        plan=dict(plan),
        bytes=_int(obj, "bytes", where, 0, 1 << 62),
        quality=_parse_quality(obj, where),
        thresholds=_list(obj, "thresholds", where, _parse_thresholds),
    )


def _parse_quality(obj: Any, where: str) -> dict[str, Any]:
    """A variant's quality record, kept as written; the figures that choose between variants (speed) and
    that inspect prints (agreement, cosine) are checked."""
    quality = _record(obj, "quality", where)
    for key in ("speedup_measured", "speedup_predicted"):
        if quality.get(key) is not None:
            _float(quality, key, f"{where}.quality", 0.0, 1e6)
    for key in ("agreement_with_fp32", "mean_cosine_to_fp32", "next_token_agreement_with_fp32"):
        if quality.get(key) is not None:
            _float(quality, key, f"{where}.quality", -1.0, 1.0)
    return quality


def _parse_file(obj: Any, where: str) -> FileEntry:
    digest = _str(obj, "sha256", where)
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise PackageError(f"manifest: {where}.sha256 is not a hex sha256")
    return FileEntry(path=_str(obj, "path", where), bytes=_int(obj, "bytes", where, 0, 1 << 62), sha256=digest)


def _parse_manifest(document: Any) -> Manifest:
    version = _check_version(document)
    manifest = Manifest(
        schema_version=version,
        model=_parse_model(_need(document, "model", dict, "manifest"), "model"),
        tokenizer=_parse_tokenizer(_need(document, "tokenizer", dict, "manifest"), "tokenizer"),
        segments=_list(document, "segments", "manifest", _parse_segment),
        exits=_list(document, "exits", "manifest", _parse_exit),
        exit_thresholds=_list(document, "exit_thresholds", "manifest", _parse_thresholds),
        files=_list(document, "files", "manifest", _parse_file),
        calibration=_parse_calibration(document),
        validation=_record(document, "validation"),
        evaluation=_record(document, "evaluation"),
        export=_record(document, "export"),
        precision_variants=_list(document, "precision_variants", "manifest", _parse_precision_variant, limit=64)
        if "precision_variants" in document else (),
        operating_points=_list(document, "operating_points", "manifest", _parse_operating_point, limit=256)
        if "operating_points" in document else (),
        decoder=_parse_decoder(_need(document, "decoder", dict, "manifest"), "decoder")
        if document.get("decoder") is not None else None,
        litert=_parse_litert(_need(document, "litert", dict, "manifest"), "litert")
        if document.get("litert") is not None else None,
    )
    check_consistency(manifest)
    return manifest
