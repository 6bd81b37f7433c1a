"""The edge package manifest: one versioned JSON document that both export and runtime use.

The typed part (model facts, tokenizer, segments, exits, thresholds, files) is what a runtime
needs and is validated field by field on read, so an app in another language can rely on
`docs/manifest.md`. The records (calibration, validation, evaluation, export) are reports for
people and tools; they are kept as plain JSON objects.

No dependency beyond the standard library: the runtime reads this module.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, TypeVar

from .errors import PackageError

FORMAT_NAME = "edgeinfer.package"
SCHEMA_VERSION = "1.9"
SEGMENT_KINDS = ("embed", "block", "exit", "head", "span", "kv", "whole")
# (1.9) A package of one graph, the whole model (exported through Optimum for a family edgeinfer has
# no adapter for): no blocks to exit after, prune or skip; its inputs and output are a full span's.
WHOLE = "whole"
TASKS = ("feature-extraction", "text-classification", "text-generation")
CONFIDENCE_KINDS = ("max_prob", "consecutive_cosine", "top2_margin")
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 8 * 1024 * 1024

# Inputs and outputs whose axis 1 is the token axis: a backend with fixed shapes (LiteRT) pads these
# up to a bucket and cuts the outputs back.
TOKEN_AXIS_NAMES = ("input_ids", "token_type_ids", "hidden", "attention_bias", "next_hidden",
                    "token_importance", "cls_attention")

# attention_bias semantics (docs/manifest.md): 0 for a token, log(size) for a token standing for
# `size` merged tokens, PAD_BIAS for padding. Graphs treat any bias below VALID_BIAS_FLOOR as padding.
# -1e4 rather than -inf: exp() gives exactly 0 in fp32 and the value survives fp16 variants.
PAD_BIAS = -10000.0
VALID_BIAS_FLOOR = -1000.0

# The full depth with token pruning inside (schema 1.7): a span over every segment that also takes
# `protected` (1 for tokens never pruned) and KEEP_TOKENS (how many tokens stay after each block but
# the last), ranking by the score its `ranks_by` names. Not a plain fused span: callers feed the counts.
PRUNED_FULL = "full_pruned"
KEEP_TOKENS = "keep_tokens"
# The token scores block graphs output and pruning ranks by: attention received (LTP) and attention
# from the first token (EViT).
TOKEN_SCORES = ("token_importance", "cls_attention")

T = TypeVar("T")


@dataclass(frozen=True)
class FileEntry:
    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Variant:
    """One stored graph of a segment at one precision (fp32 is always present)."""

    precision: str
    path: str
    resident_bytes: int | None = None  # (1.3) what a session on it holds: inline and external tensors


@dataclass(frozen=True)
class Segment:
    name: str
    kind: str
    index: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    variants: tuple[Variant, ...]
    covers: tuple[str, ...] = ()  # a span: the consecutive segments it computes in one graph
    ranks_by: str | None = None  # (1.7) a pruning span: the token score it keeps the top tokens by

    @property
    def prunes_inside(self) -> bool:
        """A span that prunes tokens itself (PRUNED_FULL): it needs KEEP_TOKENS fed, so it is not a
        plain fused graph of the segments it covers."""
        return KEEP_TOKENS in self.inputs

    def graph(self, precision: str = "fp32") -> str:
        return self.graph_variant(precision).path

    def graph_variant(self, precision: str = "fp32") -> Variant:
        for variant in self.variants:
            if variant.precision == precision:
                return variant
        raise PackageError(f"segment {self.name!r} has no {precision} variant; "
                           f"it has {[v.precision for v in self.variants]}")


@dataclass(frozen=True)
class ExitHead:
    """An exit after `after_block` blocks (1-based count of blocks run)."""

    after_block: int
    segment: str
    confidence: str


@dataclass(frozen=True)
class LengthThresholds:
    """Thresholds calibrated on the inputs of one length range alone (schema 1.8): inputs of up to
    `max_tokens` tokens (None: any longer) and more than the previous range's."""

    max_tokens: int | None
    thresholds: tuple[float | None, ...]
    examples: int  # calibration inputs in this range


@dataclass(frozen=True)
class ExitThresholds:
    """Per-exit thresholds calibrated for one agreement level with the full model.

    `thresholds[i]` belongs to `exits[i]`; None means the exit never answers at this level.
    `exit_shares` has one entry per exit plus a last one for the full depth. With `by_length`, each
    input takes the thresholds of its length range (so a shift in the mix of lengths leaves each
    range's promise intact), and `thresholds` holds the strictest of them per exit, for readers
    that do not know ranges.
    """

    agreement: float
    thresholds: tuple[float | None, ...]
    exit_shares: tuple[float, ...]
    expected_mean_depth: float
    calibration_agreement: float
    by_length: tuple[LengthThresholds, ...] = ()

    @property
    def ranges(self) -> tuple["LengthThresholds | ExitThresholds", ...]:
        """The per-length sets, or this one set for every length."""
        return self.by_length or (self,)

    @property
    def certifies_final_answer(self) -> bool:
        """A precision variant's level: in some length range its final answer has a restart threshold
        (where none has, every variant answer would be redone at fp32)."""
        return any(r.thresholds[-1] is not None for r in self.ranges)

    def for_tokens(self, tokens: int) -> tuple[float | None, ...]:
        """The thresholds that apply to an input of this many tokens."""
        for bucket in self.by_length:
            if bucket.max_tokens is None or tokens <= bucket.max_tokens:
                return bucket.thresholds
        return self.thresholds


@dataclass(frozen=True)
class PrecisionVariant:
    """A lowered copy of the model (quant/), stored as one more variant of every segment under `name`.

    `plan` gives each weight node of the full-depth graph its precision (nodes not named stay fp32).
    `thresholds` are calibrated against the fp32 full model, like the package's own, with one more
    entry than there are exits: the last applies to the variant's final confidence, and an answer
    below it restarts at fp32 (confidence-based restart). Their `expected_mean_depth` counts cost in
    this variant's blocks, a restart included.
    """

    name: str
    plan: dict[str, str]
    bytes: int
    quality: dict[str, Any]
    thresholds: tuple[ExitThresholds, ...]

    @property
    def speedup(self) -> float | None:
        """fp32 latency over this variant's: measured when it was written, predicted in packages
        written before variants were timed; None when neither is recorded."""
        value = self.quality.get("speedup_measured", self.quality.get("speedup_predicted"))
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None

    def thresholds_for(self, agreement: float) -> ExitThresholds | None:
        return strictest_level(self.thresholds, agreement)


def exact_level(levels: tuple[ExitThresholds, ...], agreement: float) -> ExitThresholds | None:
    """The calibrated set for exactly this agreement level, if the package stores it."""
    return next((t for t in levels if abs(t.agreement - agreement) < 1e-9), None)


def strictest_level(levels: tuple[ExitThresholds, ...], agreement: float) -> ExitThresholds | None:
    """The calibrated set for the strictest stored level at or above `agreement`."""
    fitting = [t for t in levels if t.agreement >= agreement - 1e-12]
    return min(fitting, key=lambda t: t.agreement) if fitting else None


@dataclass(frozen=True)
class ModelFacts:
    family: str
    model_type: str
    task: str
    num_blocks: int
    hidden_size: int
    num_heads: int
    labels: tuple[str, ...] | None
    embedding_dim: int | None
    normalize_embedding: bool
    source: str


@dataclass(frozen=True)
class TokenizerSpec:
    path: str
    max_length: int
    uses_token_type_ids: bool
    pad_id: int
    special_ids: tuple[int, ...]


@dataclass(frozen=True)
class DecoderFacts:
    """What a generation loop needs beyond the encoder facts (schema 1.4, text-generation only).

    The KV cache holds `num_kv_heads x head_dim` keys and as many values per block and token, in
    fp32: `kv_bytes_per_token` is their sum over blocks, what a memory cap divides. The chat template
    is stored rendered around one user message (`prompt_prefix` + message + `prompt_suffix`), so the
    runtime needs no template engine.
    """

    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    eos_ids: tuple[int, ...]
    bos_id: int | None
    prompt_prefix: str
    prompt_suffix: str
    kv_bytes_per_token: int
    # the fp32 embedding table [vocab_size, hidden_size] inside a package file, so a runtime can map it
    # instead of holding it in a session (rows are read on demand); None: use the embed graph
    embedding_file: str | None = None
    embedding_offset: int | None = None


def litert_signature(segment: str, tokens: int) -> str:
    return f"{segment}_t{tokens}"


@dataclass(frozen=True)
class LiteRTGraphs:
    """(1.5) The segments converted to LiteRT, for runtimes that ship LiteRT rather than onnxruntime.

    LiteRT graphs have static shapes, so each segment is converted at several token counts
    (`buckets`, batch 1). All of them live in one .tflite file per precision as signatures named
    `{segment}_t{tokens}`: signatures of one file share their weights, so the file is about the size
    of the model, where a file per graph would store every block three times (block, stage, full).
    A signature's inputs `args_0..` follow the segment's `inputs`, its outputs `output_0..` the
    segment's `outputs`; a runtime pads the token axis (TOKEN_AXIS_NAMES) up to the next bucket with
    PAD_BIAS in `attention_bias`, and cuts token-axis outputs back.
    """

    files: dict[str, str]  # precision -> path of its .tflite file
    buckets: tuple[int, ...]
    segments: tuple[str, ...]

    def signature(self, segment: str, tokens: int) -> str:
        return litert_signature(segment, tokens)

    def bucket_for(self, tokens: int) -> int | None:
        """The smallest bucket holding `tokens`, or None when none does."""
        return next((b for b in self.buckets if b >= tokens), None)


@dataclass(frozen=True)
class OperatingPoint:
    """A policy `edgeinfer calibrate` measured on calibration texts (schema 1.3): how often it agrees
    with the full model and what it costs relative to the full model on the calibrating device.

    `policy` holds the runtime Policy's fields (agreement, keep_schedule, reduction, skip_blocks,
    precision) as plain JSON, so the format does not depend on the runtime's classes.
    """

    name: str
    policy: dict[str, Any]
    agreement: float
    agreement_bound: float  # one-sided 95% lower confidence bound of `agreement`
    relative_latency: float
    mean_depth: float
    accuracy: float | None = None


@dataclass(frozen=True)
class Manifest:
    schema_version: str
    model: ModelFacts
    tokenizer: TokenizerSpec
    segments: tuple[Segment, ...]
    exits: tuple[ExitHead, ...]
    exit_thresholds: tuple[ExitThresholds, ...]
    files: tuple[FileEntry, ...] = ()
    calibration: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    precision_variants: tuple[PrecisionVariant, ...] = ()
    operating_points: tuple[OperatingPoint, ...] = ()
    decoder: DecoderFacts | None = None
    litert: LiteRTGraphs | None = None

    def segment(self, name: str) -> Segment:
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise PackageError(f"manifest has no segment {name!r}")

    def span_covering(self, names: tuple[str, ...]) -> Segment | None:
        """A fused graph computing exactly these consecutive segments with every output they give,
        if the package has one."""
        spans = self.spans_covering(names)
        return max(spans, key=lambda s: len(s.outputs)) if spans else None

    def spans_covering(self, names: tuple[str, ...]) -> tuple[Segment, ...]:
        """Every fused graph over these segments: a stage may come twice, with and without the token
        scores its block gives (schema 1.6)."""
        return tuple(s for s in self.fused_spans() if s.covers == names)

    def fused_spans(self) -> tuple[Segment, ...]:
        """Spans that compute the segments they cover and nothing else: not the pruning span,
        whose cost and output follow the keep counts it is fed."""
        return tuple(s for s in self.segments if s.kind == "span" and not s.prunes_inside)

    def pruning_span(self, ranks_by: str) -> Segment | None:
        """The full depth that prunes inside ranking by this score, if the package has one (1.7)."""
        return next((s for s in self.segments if s.prunes_inside and s.ranks_by == ranks_by), None)

    def full_depth(self) -> Segment | None:
        """The one graph that computes the whole model: the fused full span, or a whole-model package's
        only graph (schema 1.9); None for packages from before fused spans."""
        whole = next((s for s in self.segments if s.kind == WHOLE), None)
        return whole or self.span_covering(("embed", *(b.name for b in self.blocks()), "head"))

    @property
    def is_whole(self) -> bool:
        """One graph and nothing to decide inside it (schema 1.9)."""
        return any(s.kind == WHOLE for s in self.segments)

    def blocks(self) -> tuple[Segment, ...]:
        return tuple(sorted((s for s in self.segments if s.kind == "block"), key=lambda s: s.index))

    def thresholds_for(self, agreement: float) -> ExitThresholds | None:
        return strictest_level(self.exit_thresholds, agreement)

    def precision_variant(self, name: str) -> PrecisionVariant:
        for variant in self.precision_variants:
            if variant.name == name:
                return variant
        known = ["fp32", *(v.name for v in self.precision_variants)]
        raise PackageError(f"this package has no precision variant {name!r}; it has {known}")

    def to_json(self) -> str:
        document = {"format": FORMAT_NAME, **asdict(self)}
        return json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n"

    @staticmethod
    def from_json(text: str | bytes) -> "Manifest":
        if len(text) > MAX_MANIFEST_BYTES:
            raise PackageError(f"manifest is {len(text)} bytes, over the {MAX_MANIFEST_BYTES} limit")
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise PackageError(f"manifest is not valid JSON ({_short(err)}); re-export the package") from None
        return _parse_manifest(document)


# --- validation on read -------------------------------------------------------------------------

def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise PackageError(f"manifest: {where} must be an object")
    if key not in obj:
        raise PackageError(f"manifest: {where}.{key} is missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    is_bool = isinstance(value, bool)
    if (is_bool and bool not in kinds) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise PackageError(f"manifest: {where}.{key} must be {names}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PackageError(f"manifest: {where}.{key} must be finite")
    return value


def _int(obj: Any, key: str, where: str, low: int = 0, high: int = 2**31) -> int:
    value = _need(obj, key, int, where)
    if not low <= value <= high:
        raise PackageError(f"manifest: {where}.{key}={value} is outside [{low}, {high}]")
    return value


def _float(obj: Any, key: str, where: str, low: float, high: float) -> float:
    value = float(_need(obj, key, (int, float), where))
    if not low <= value <= high:
        raise PackageError(f"manifest: {where}.{key}={value} is outside [{low}, {high}]")
    return value


def _str(obj: Any, key: str, where: str, choices: tuple[str, ...] | None = None) -> str:
    value = _need(obj, key, str, where)
    if choices is not None and value not in choices:
        raise PackageError(f"manifest: {where}.{key}={value!r} is not one of {list(choices)}")
    return value


def _list(obj: Any, key: str, where: str, parse: Callable[[Any, str], T], limit: int = 10_000) -> tuple[T, ...]:
    items = _need(obj, key, list, where)
    if len(items) > limit:
        raise PackageError(f"manifest: {where}.{key} has {len(items)} items, over the limit of {limit}")
    return tuple(parse(item, f"{where}.{key}[{i}]") for i, item in enumerate(items))


def _record(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key, {}) if isinstance(obj, dict) else {}
    if not isinstance(value, dict):
        raise PackageError(f"manifest: {key} must be an object")
    return value


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
    if embedding_dim is not None and (isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int)):
        raise PackageError(f"manifest: {where}.embedding_dim must be an integer or null")
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
    )


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
    return float(_need({"v": value}, "v", (int, float), where))


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
        quality=_record(obj, "quality"),
        thresholds=_list(obj, "thresholds", where, _parse_thresholds),
    )


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
        calibration=_record(document, "calibration"),
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
    _check_consistency(manifest)
    return manifest


def _check_consistency(manifest: Manifest) -> None:
    if (manifest.model.task == "text-generation") != (manifest.decoder is not None):
        raise PackageError("manifest: a text-generation package needs the decoder section, and only it")
    names = [s.name for s in manifest.segments]
    if len(set(names)) != len(names):
        raise PackageError("manifest: segment names repeat")
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
    if manifest.litert is not None:
        unknown = [name for name in manifest.litert.segments if name not in names]
        if unknown:
            raise PackageError(f"manifest: litert.segments names unknown segments {unknown[:3]}")
        if manifest.decoder is not None:
            raise PackageError("manifest: LiteRT graphs are for encoder packages only")
    for variant in manifest.precision_variants:
        if variant.name == "fp32" or [v.name for v in manifest.precision_variants].count(variant.name) > 1:
            raise PackageError(f"manifest: precision variant name {variant.name!r} is reserved or repeated")
        lacking = [s.name for s in manifest.segments if variant.name not in (v.precision for v in s.variants)]
        litert_only = manifest.litert is not None and variant.name in manifest.litert.files
        if lacking and not litert_only:
            raise PackageError(f"manifest: precision variant {variant.name!r} has no graph for {lacking}")
        for level in variant.thresholds:
            if len(level.thresholds) != len(manifest.exits) + 1:
                raise PackageError(f"manifest: variant {variant.name!r} thresholds for agreement "
                                   f"{level.agreement} need one per exit plus the restart threshold")


def file_entry(root: "os.PathLike[str] | str", relative: str) -> FileEntry:
    """Size and sha256 of one package file, streamed so large graphs never sit in memory twice."""
    digest = hashlib.sha256()
    path = os.path.join(root, relative)
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(path=relative, bytes=size, sha256=digest.hexdigest())
