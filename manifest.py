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
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import PackageError

FORMAT_NAME = "edgeinfer.package"
SCHEMA_VERSION = "1.10"
SEGMENT_KINDS = ("embed", "block", "exit", "head", "span", "kv", "whole")
# (1.9) A package of one graph, the whole model (exported through Optimum for a family edgeinfer has
# no adapter for): no blocks to exit after, prune or skip; its inputs and output are a full span's.
WHOLE = "whole"
TASKS = ("feature-extraction", "text-classification", "text-generation")
CONFIDENCE_KINDS = ("max_prob", "consecutive_cosine", "top2_margin")
MANIFEST_NAME = "manifest.json"
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert", "mpnet")  # position ids start past padding_idx
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

    def has_precision(self, precision: str) -> bool:
        """Does the package store an ONNX graph of this segment at this precision?"""
        return any(v.precision == precision for v in self.variants)

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
    head_screen: HeadScreen | None = None  # (1.10) exact greedy argmax through a lowered head


@dataclass(frozen=True)
class HeadScreen:
    """(1.10) What lets a lowered head screen the vocabulary for the fp32 head's argmax.

    `path` holds float32 [vocab_size] ||W_v - Q(W)_v|| (each row's quantization error), then float32
    [vocab_size] ||Q(W)_v||. With them a runtime bounds every row's error in the lowered logits and
    computes the fp32 logit only for rows whose bound reaches the top, from the normed states the
    head graphs give beside their logits and the fp32 weight's rows, mapped from the package
    (runtime/decoder/head_screen.py)."""

    precision: str  # the lowered variant whose head screens (weight-only 8-bit MatMulNBits)
    path: str
    block_size: int  # the block its int8 compute quantizes activations in
    weight_file: str  # the fp32 head weight [vocab_size, hidden_size] in a package file, whose rows it reads
    weight_offset: int


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
