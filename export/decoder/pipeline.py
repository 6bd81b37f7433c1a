"""`export_decoder`: a Llama-family causal LM becomes an edge package for text generation.

load (a HF directory, or the built-in GGUF de-quantised once) -> rebuild the blocks with explicit
KV-cache tensors -> export embed, blocks, key/value-only graphs, the shared head and fused spans
-> validate: greedy generation from the package's own runtime equals PyTorch's `generate`
-> write the package atomically.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ...errors import ExportError
from ...manifest import SCHEMA_VERSION, DecoderFacts, ExitHead, Manifest, ModelFacts, TokenizerSpec
from ...runtime.decoder.generation import DecoderSession
from ...runtime.onnx_wire import external_entries
from ...runtime.package import Package
from ..shared_weights import WEIGHTS_FILE
from ..package_writer import discard, finalize, prepare_staging
from .exit_calibration import calibrate_decoder_exits
from .graphs import export_decoder_graphs
from .segments import DecoderShape, decoder_modules
from ..model_source import quiet_transformers
from .source import resolve_decoder_dir

SUPPORTED_MODEL_TYPES = ("llama",)
PROMPT_SENTINEL = "\u2063EDGEINFER-PROMPT\u2063"
# plain continuations (no chat template), so the model writes all the tokens asked for
VALIDATION_PROMPTS = (
    "Once upon a time, there was a little girl who",
    "The three most important inventions of the last century are",
    "def fibonacci(n):",
)


BUNDLED_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "calibration_sentences.txt"


@dataclass(frozen=True)
class DecoderExportOptions:
    exits: str | None = None  # "8,15,22", "none", or None for the quarter points
    validate_tokens: int = 64
    calib: str | None = None  # prompts, one per line (default: a bundled sample)
    calib_prompts: int = 24
    calib_tokens: int = 32
    force: bool = False


def parse_decoder_exits(spec: str | None, num_blocks: int) -> tuple[int, ...]:
    if spec is None or not spec.strip():
        return tuple(sorted({max(1, min(num_blocks - 1, round(num_blocks * q / 4))) for q in (1, 2, 3)}))
    from ..pipeline import parse_exits

    return parse_exits(spec, num_blocks)


def load_causal_lm(model: str):
    """-> (LlamaForCausalLM in eval mode, its fast tokenizer, where it came from)."""
    directory, source = resolve_decoder_dir(model)
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"text-generation export supports model_type {', '.join(SUPPORTED_MODEL_TYPES)}; "
                          f"{directory} is {model_type!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError) as err:
        raise ExportError(f"cannot load {directory}: {str(err).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{directory} has no fast tokenizer (tokenizer.json); the runtime needs one")
    return lm, tokenizer, source


def _prompt_template(tokenizer) -> tuple[str, str]:
    """The chat template rendered around one user message, split at the message."""
    if not getattr(tokenizer, "chat_template", None):
        return "", ""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT_SENTINEL}],
                                             add_generation_prompt=True, tokenize=False)
    prefix, _, suffix = rendered.partition(PROMPT_SENTINEL)
    return prefix, suffix


def _eos_ids(lm, tokenizer) -> tuple[int, ...]:
    found: set[int] = set()
    for value in (getattr(lm.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
    return tuple(sorted(found))


def _facts(shape: DecoderShape, lm, tokenizer) -> DecoderFacts:
    prefix, suffix = _prompt_template(tokenizer)
    bos = tokenizer.bos_token_id
    return DecoderFacts(
        num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim, vocab_size=shape.vocab_size,
        max_positions=shape.max_positions, eos_ids=_eos_ids(lm, tokenizer),
        bos_id=None if bos is None else int(bos), prompt_prefix=prefix, prompt_suffix=suffix,
        kv_bytes_per_token=2 * shape.num_blocks * shape.num_kv_heads * shape.head_dim * 4,
    )


def export_decoder(model: str, output: str | Path, options: DecoderExportOptions = DecoderExportOptions()) -> Manifest:
    started = time.perf_counter()
    output = Path(output).resolve()
    if output.exists() and not options.force:
        raise ExportError(f"{output} already exists; pass --force to replace it")
    lm, tokenizer, source = load_causal_lm(model)
    modules = decoder_modules(lm)
    shape = modules.shape
    exits = parse_decoder_exits(options.exits, shape.num_blocks)
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (_eos_ids(lm, tokenizer) or (0,))[0]
    spec = TokenizerSpec(path="tokenizer/tokenizer.json", max_length=shape.max_positions, uses_token_type_ids=False,
                         pad_id=int(pad), special_ids=tuple(sorted(set(tokenizer.all_special_ids))))
    staging = prepare_staging(output, options.force)
    try:
        (staging / spec.path).write_text(backend.to_str(), encoding="utf-8")
        segments = export_decoder_graphs(staging / "graphs", modules, exits)
        facts = replace(_facts(shape, lm, tokenizer), **_embedding_table(staging, modules))
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            model=ModelFacts(family="llama", model_type=str(lm.config.model_type), task="text-generation",
                             num_blocks=shape.num_blocks, hidden_size=shape.hidden_size, num_heads=shape.num_heads,
                             labels=None, embedding_dim=None, normalize_embedding=False, source=source),
            tokenizer=spec, segments=tuple(segments),
            exits=tuple(ExitHead(after_block=e, segment="head", confidence="top2_margin") for e in exits),
            exit_thresholds=(), decoder=facts,
        )
        validation = validate_generation(Package(staging, manifest), lm, tokenizer, modules, options.validate_tokens)
        levels, calibration = calibrate_decoder_exits(DecoderSession(Package(staging, manifest)),
                                                      _prompts(options), options.calib_tokens)
        manifest = replace(manifest, validation=validation, exit_thresholds=levels, calibration=calibration, export={
            "edgeinfer": __version__, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "onnx": __import__("onnx").__version__,
            "python": platform.python_version(), "seconds": round(time.perf_counter() - started, 1)})
        manifest = finalize(staging, output, manifest)
    except BaseException:
        discard(staging)
        raise
    return manifest


def embedding_location(graph_dir: Path) -> dict:
    """Where the embed graph's table sits in the shared weights file (DecoderFacts.embedding_*)."""
    entries = external_entries((graph_dir / "embed.onnx").read_bytes())
    if len(entries) != 1 or entries[0].get("location") != WEIGHTS_FILE:
        return {"embedding_file": None, "embedding_offset": None}
    return {"embedding_file": f"graphs/{WEIGHTS_FILE}", "embedding_offset": int(entries[0].get("offset", "0"))}


def _embedding_table(staging: Path, modules) -> dict:
    """The table's location, checked byte for byte against the model's own embedding."""
    location = embedding_location(staging / "graphs")
    if location["embedding_file"] is None:
        return location
    table = modules.embed.embedding.weight.detach().numpy()
    mapped = np.memmap(staging / location["embedding_file"], np.float32, "r", location["embedding_offset"], table.shape)
    if not np.array_equal(mapped, table):
        raise ExportError("validation failed: the embedding table in graphs/weights.bin differs from the model's")
    return location


def _prompts(options: DecoderExportOptions) -> list[str]:
    source = Path(options.calib) if options.calib else BUNDLED_PROMPTS
    if not source.is_file():
        raise ExportError(f"--calib {source} does not exist; pass a text file with one prompt per line")
    prompts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if options.calib_prompts and len(prompts) < 2:
        raise ExportError(f"{source} has {len(prompts)} prompts; exit calibration needs at least 2 (dozens are better)")
    return prompts[:options.calib_prompts]


def validate_generation(package: Package, lm, tokenizer, modules, new_tokens: int) -> dict:
    """Greedy generation from the package (fused spans, and one graph per block) against PyTorch's
    own `generate`, token for token; and each key/value-only graph against its block's cache output."""
    fused, chained = DecoderSession(package), DecoderSession(package, fused=False)
    record: dict = {"new_tokens": new_tokens, "prompts": []}
    for prompt in VALIDATION_PROMPTS:
        ids = fused.encode(prompt, chat=False)
        with torch.no_grad():
            reference = lm.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                    min_new_tokens=new_tokens, pad_token_id=package.manifest.tokenizer.pad_id)
        expected = [int(t) for t in reference[0, len(ids):]]
        results = {name: list(session.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens).token_ids)
                   for name, session in (("fused", fused), ("chained", chained))}
        for name, got in results.items():
            if got != expected:
                at = next(i for i, (a, b) in enumerate(zip(got + [-1], expected + [-2])) if a != b)
                raise ExportError(f"validation failed: the {name} graphs' greedy generation for {prompt!r} leaves "
                                  f"PyTorch's at new token {at}; report this model")
        identical = min(next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
                        for got in results.values())  # counted, not assumed: the check above may change
        record["prompts"].append({"prompt": prompt, "prompt_tokens": len(ids), "identical_tokens": identical})
    record["kv_max_abs_diff"] = _check_key_values(fused, modules)
    ids = np.array([[0, 1, modules.shape.vocab_size - 1]], np.int64)
    graph_rows = fused.runner.graph(package.manifest.segment("embed")).run(None, {"input_ids": ids})[0]
    if not np.array_equal(graph_rows, modules.embed.embedding.weight.detach().numpy()[ids]):
        raise ExportError("validation failed: the embed graph's rows differ from the model's embedding")
    return record


def _check_key_values(session: DecoderSession, modules) -> float:
    shape = modules.shape
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((1, 3, shape.hidden_size)).astype(np.float32)
    positions = np.arange(2, 5, dtype=np.int64).reshape(1, -1)
    past = rng.standard_normal((1, shape.num_kv_heads, 2, shape.head_dim)).astype(np.float32)
    worst = 0.0
    for b in range(shape.num_blocks):
        feeds = {"hidden": hidden, "position_ids": positions, f"past_key_{b:02d}": past, f"past_value_{b:02d}": past}
        key, value = session.runner.graph(session.manifest.segment(f"kv_{b:02d}")).run(None, feeds)
        full = session.runner.graph(session.manifest.segment(f"block_{b:02d}")).run(
            None, {**feeds, "attention_bias": np.zeros((1, 5), np.float32)})
        worst = max(worst, float(np.abs(key - full[1]).max()), float(np.abs(value - full[2]).max()))
    if worst > 1e-3:
        raise ExportError(f"validation failed: key/value graphs differ from their blocks by {worst:.2g}")
    return worst
