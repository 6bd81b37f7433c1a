"""Issue 7's figures: SmolLM2-135M decoding on this machine, batch 1, every configuration on the same
prompts in one run.

    python -m edgeinfer.bench.decoder_bench [--prompts 20] [--new-tokens 48] [--out reports/decoder]

Prompts are "Summarize: <AG News dev text>" in the chat template (../shared/data). Configurations:
PyTorch eager (`generate`, KV cache, measured alone: its OpenMP threads spin and slow whatever runs
next), one monolithic onnxruntime graph (embedding, 30 blocks and head with KV in/out, our own export
since Optimum is not installable beside transformers 5), and the package: full depth fp32, the q8
variant alone, speculative decoding with a q8 draft, and with a shallow fp32 draft. Every run makes
exactly --new-tokens tokens (end of sequence suppressed, as transformers' min_new_tokens does), so
rates compare like with like. Decode rate = (new tokens - 1) / (time after the first new token);
ratios are of medians over prompts, configurations interleaved prompt by prompt.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from ..errors import PackageError
from ..progress import progress_bar
from ..runtime.package import open_package
from ..runtime.sessions import open_session
from ..runtime.user_cache import cache_root
from .report_files import write_atomically, write_json

SPECULATIVE = (("speculative q8 draft, 4 tokens", {"mode": "speculative", "draft_precision": "q8", "draft_tokens": 4}),
               ("speculative q8 draft, 6 tokens", {"mode": "speculative", "draft_precision": "q8", "draft_tokens": 6}),
               ("speculative fp32 blocks 1-22 draft, 3 tokens",
                {"mode": "speculative", "draft_blocks": 22, "draft_tokens": 3}))


def bench_package(cache: Path) -> Path:
    """The SmolLM2 package with its q8 variant, exported once into the bench cache."""
    from ..export.decoder.pipeline import DecoderExportOptions, export_decoder
    from ..quant.decoder_variant import add_decoder_variant

    package = cache / "smollm2.edge"
    try:
        if "q8" in (v.name for v in open_package(package, verify=False).manifest.precision_variants):
            return package
    except (PackageError, OSError):
        pass
    cache.mkdir(parents=True, exist_ok=True)
    export_decoder("smollm2", package, DecoderExportOptions(force=True))
    add_decoder_variant(package, "q8")
    return package


def read_prompts(shared: Path, count: int, skip: int = 0) -> list[str]:
    rows = (shared / "data" / "agnews" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = [row.split("\t")[0].strip() for row in rows if row.strip()]
    return [f"Summarize: {text}" for text in texts[skip:skip + count]]


class Monolith:
    """Greedy decoding over one onnxruntime graph holding the whole model."""

    def __init__(self, path: Path, num_blocks: int, kv_heads: int, head_dim: int):
        self.session = open_session(path)
        self.num_blocks, self.kv_heads, self.head_dim = num_blocks, kv_heads, head_dim

    def generate(self, ids: list[int], new_tokens: int, eos: tuple[int, ...]) -> tuple[list[int], float, float]:
        started = time.perf_counter()
        past = [np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)] * (2 * self.num_blocks)
        tokens, out, first = list(ids), [], 0.0
        feed_ids, position = list(ids), 0
        while len(out) < new_tokens:
            feeds = {"input_ids": np.array([feed_ids], np.int64),
                     "position_ids": np.arange(position, position + len(feed_ids)).reshape(1, -1),
                     "attention_bias": np.zeros((1, position + len(feed_ids)), np.float32)}
            for b in range(self.num_blocks):
                feeds[f"past_key_{b:02d}"], feeds[f"past_value_{b:02d}"] = past[2 * b], past[2 * b + 1]
            logits, *past = self.session.run(None, feeds)
            row = logits[0, -1].copy()
            row[list(eos)] = -np.inf
            token = int(row.argmax())
            position += len(feed_ids)
            out.append(token)
            tokens.append(token)
            feed_ids = [token]
            if len(out) == 1:
                first = time.perf_counter() - started
        return out, first * 1000, (time.perf_counter() - started) * 1000


def monolith_graph(cache: Path, package: Path) -> Path:
    """Our own single-graph export of the model (the package's blocks, embedding and head modules)."""
    path = cache / "smollm2-monolith" / "model.onnx"
    if path.is_file():
        return path
    import torch

    from ..export.decoder.graphs import _axes, _cache_names
    from ..export.decoder.pipeline import _load
    from ..export.decoder.segments import DecoderMonolith, decoder_modules
    from ..export.onnx_graphs import export_graph
    from ..export.shared_weights import share_weights

    lm, _, _ = _load("smollm2")
    modules = decoder_modules(lm)
    shape = modules.shape
    blocks = range(shape.num_blocks)
    past = tuple(torch.randn(1, shape.num_kv_heads, 3, shape.head_dim) for _ in range(2 * shape.num_blocks))
    inputs = ["input_ids", "position_ids", "attention_bias", *_cache_names("past", blocks)]
    outputs = ["logits", *_cache_names("present", blocks)]
    staging = path.parent.with_name(path.parent.name + ".tmp")
    staging.mkdir(parents=True, exist_ok=True)
    export_graph(DecoderMonolith(modules), (torch.tensor([[5, 6]]), torch.tensor([[3, 4]]), torch.zeros(1, 5), *past),
                 inputs, outputs, staging / "model.onnx", _axes(inputs + outputs))
    share_weights([staging / "model.onnx"], staging / "weights.bin")
    os.replace(staging, path.parent)
    return path


def pytorch_rates(prompts_ids: list[list[int]], new_tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from ..export.decoder.source import built_in_directory

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls, self.at = 0, 0.0

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2:  # the first call carries the prompt
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    model = AutoModelForCausalLM.from_pretrained(str(built_in_directory("smollm2")), dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        model.generate(torch.tensor([prompts_ids[0]]), max_new_tokens=4, do_sample=False, pad_token_id=2)  # warm-up
        for ids in prompts_ids:
            streamer = FirstToken()
            started = time.perf_counter()
            out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=2, streamer=streamer)
            total = (time.perf_counter() - started) * 1000
            rows.append(_rate([int(t) for t in out[0, len(ids):]], (streamer.at - started) * 1000, total))
    del model
    return rows


def _rate(tokens: list[int], first_ms: float, total_ms: float) -> dict:
    decoding = (total_ms - first_ms) / 1000
    return {"tokens": tokens, "first_token_ms": first_ms, "total_ms": total_ms,
            "tokens_per_s": (len(tokens) - 1) / decoding if decoding > 0 else 0.0}


def summarize(name: str, rows: list[dict], reference: list[list[int]], base_rate: float | None) -> dict:
    rates = [r["tokens_per_s"] for r in rows]
    identical = np.mean([r["tokens"] == ref for r, ref in zip(rows, reference)])
    summary = {"config": name, "prompts": len(rows), "tokens_per_s_median": float(np.median(rates)),
               "tokens_per_s_p10": float(np.percentile(rates, 10)),
               "first_token_ms_median": float(np.median([r["first_token_ms"] for r in rows])),
               "identical_to_full_fp32": float(identical)}
    if base_rate:
        summary["speedup_vs_full_fp32"] = summary["tokens_per_s_median"] / base_rate
    drafted = sum(r.get("drafted", 0) for r in rows)
    if drafted:
        summary["draft_acceptance"] = sum(r["accepted"] for r in rows) / drafted
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--out", default="reports/decoder")
    args = parser.parse_args(argv)
    cache = cache_root() / "bench"
    package = bench_package(cache)
    import edgeinfer

    session = edgeinfer.load(package)
    facts = session.facts
    prompts = read_prompts(Path(args.shared), args.prompts)
    prompts_ids = [session.encode(p) for p in prompts]
    monolith = Monolith(monolith_graph(cache, package), session.num_blocks, facts.num_kv_heads, facts.head_dim)

    configs: list[tuple[str, dict]] = [("edgeinfer full depth fp32", {}), ("edgeinfer q8 variant", {"precision": "q8"}),
                                       *SPECULATIVE]
    results: dict[str, list[dict]] = {name: [] for name, _ in [("onnxruntime monolithic fp32", {}), *configs]}
    session.generate(prompts_ids[0], max_new_tokens=4)  # warm-up: sessions open
    for _, options in configs[1:]:
        session.generate(prompts_ids[0], max_new_tokens=4, **options)
    monolith.generate(prompts_ids[0], 4, facts.eos_ids)
    with progress_bar(len(prompts_ids) * (len(configs) + 1), "decoding") as bar:
        for ids in prompts_ids:
            tokens, first, total = monolith.generate(ids, args.new_tokens, facts.eos_ids)
            results["onnxruntime monolithic fp32"].append(_rate(tokens, first, total))
            bar.update()
            for name, options in configs:
                got = session.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **options)
                trace = got.trace
                row = _rate(list(got.token_ids), trace.first_token_ms, trace.total_ms)
                row.update(drafted=trace.drafted, accepted=trace.accepted)
                results[name].append(row)
                bar.update()
    results["pytorch eager fp32"] = pytorch_rates(prompts_ids, args.new_tokens)
    reference = [r["tokens"] for r in results["edgeinfer full depth fp32"]]
    base = float(np.median([r["tokens_per_s"] for r in results["edgeinfer full depth fp32"]]))
    order = ["pytorch eager fp32", "onnxruntime monolithic fp32", *(name for name, _ in configs)]
    rows = [summarize(name, results[name], reference, base) for name in order]
    document = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to fp32)", "machine": platform.machine(),
                "threads": os.cpu_count(), "prompts": len(prompts), "new_tokens": args.new_tokens,
                "prompt_tokens_median": float(np.median([len(i) for i in prompts_ids])), "rows": rows,
                "q8_quality": session.manifest.precision_variant("q8").quality}
    out = Path(args.out)
    write_json(out / "decoder.json", document)
    write_atomically(out / "decoder.md", markdown(document))
    print(markdown(document))
    return 0


def markdown(document: dict) -> str:
    lines = [f"SmolLM2-135M, batch 1, {document['prompts']} prompts (median {document['prompt_tokens_median']:.0f} "
             f"tokens), {document['new_tokens']} new tokens each", "",
             "| configuration | tokens/s (median) | p10 | vs full fp32 | first token ms | identical to full fp32 | draft acceptance |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in document["rows"]:
        acceptance = f"{row['draft_acceptance']:.3f}" if "draft_acceptance" in row else "-"
        lines.append(f"| {row['config']} | {row['tokens_per_s_median']:.1f} | {row['tokens_per_s_p10']:.1f} | "
                     f"{row.get('speedup_vs_full_fp32', float('nan')):.2f}x | {row['first_token_ms_median']:.0f} | "
                     f"{row['identical_to_full_fp32']:.0%} | {acceptance} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
