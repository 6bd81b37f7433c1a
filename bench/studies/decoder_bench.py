"""SmolLM2-135M decoding figures on this machine, batch 1, every configuration on the same
prompts in one run.

    python -m edgeinfer.bench.studies.decoder_bench [--prompts 20] [--new-tokens 48] [--out reports/decoder]
        [--genai DIR]

Prompts are "Summarize: <AG News dev text>" in the chat template (../shared/data). Configurations:
PyTorch eager (`generate`, KV cache, measured alone: its OpenMP threads spin and slow whatever runs
next), one monolithic onnxruntime graph (embedding, 30 blocks and head with KV in/out, our own export
since Optimum is not installable beside transformers 5), and the package: full depth fp32, the q8
variant alone and speculating at q8 from the context, speculative decoding with a q8 draft, and with a
shallow fp32 draft. With --genai, a model folder written by onnxruntime-genai's model builder (`pip
install 'edgeinfer[peers]'`, then `python -m onnxruntime_genai.models.builder -m HF_FOLDER -o DIR -p
fp32 -e cpu`) runs beside them on the same token ids, and with --gguf NAME=PATH (repeatable)
llama.cpp on GGUF files of the same weights (llama-cpp-python, built from source: PyPI has no
wheel). Every run makes
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

from ...errors import PackageError
from ...progress import progress_bar
from ...runtime.decoder.graphs import GQA_FEED
from ...runtime.package import open_package
from ...runtime.sessions import open_session
from ...runtime.user_cache import cache_root
from ..report_files import write_atomically, write_json

SPECULATIVE = (  # each names its drafts: mode="speculative" alone looks in the context, then drafts with q8
    ("speculative, q8 draft", {"mode": "speculative", "draft_precision": "q8", "draft_ngram": 0, "draft_tokens": 4}),
    ("speculative, context draft", {"mode": "speculative", "draft_blocks": 0, "draft_ngram": 3, "draft_tokens": 4}),
    ("speculative, context then q8 draft", {"mode": "speculative", "draft_precision": "q8", "draft_ngram": 3,
                                            "draft_tokens": 4}),
    ("speculative, fp32 blocks 1-22 draft", {"mode": "speculative", "draft_blocks": 22, "draft_ngram": 0,
                                             "draft_tokens": 3}),
)
EARLY_EXIT_LEVEL = 0.95
PRUNING = (("prune 50% after block 8", ((8, 0.5),)), ("prune 30% after block 8", ((8, 0.3),)),
           ("keep 70% after 8, 40% after 15", ((8, 0.7), (15, 0.4))))


def bench_package(cache: Path) -> Path:
    """The SmolLM2 package with its q8 variant, exported once into the bench cache."""
    from ...export.decoder.pipeline import DecoderExportOptions, export_decoder
    from ...quant.decoder_variant import add_decoder_variant

    package = cache / "smollm2.edge"
    try:
        manifest = open_package(package, verify=False).manifest
        current = manifest.exit_thresholds and "attention_received" in manifest.segment("block_00").outputs \
            and manifest.decoder.embedding_file is not None \
            and any(GQA_FEED in s.inputs for s in manifest.segments)  # the GroupQueryAttention spans
        if current and "q8" in (v.name for v in manifest.precision_variants):
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

    from ...export.decoder.graphs import decoder_axes
    from ...export.decoder.segments import cache_names
    from ...export.decoder.pipeline import load_causal_lm
    from ...export.decoder.segments import DecoderMonolith, decoder_modules
    from ...export.onnx_graphs import export_graph
    from ...export.shared_weights import share_weights

    lm, _, _ = load_causal_lm("smollm2")
    modules = decoder_modules(lm)
    shape = modules.shape
    blocks = range(shape.num_blocks)
    past = tuple(torch.randn(1, shape.num_kv_heads, 3, shape.head_dim) for _ in range(2 * shape.num_blocks))
    inputs = ["input_ids", "position_ids", "attention_bias", *cache_names("past", blocks)]
    outputs = ["logits", *cache_names("present", blocks)]
    staging = path.parent.with_name(path.parent.name + ".tmp")
    staging.mkdir(parents=True, exist_ok=True)
    export_graph(DecoderMonolith(modules), (torch.tensor([[5, 6]]), torch.tensor([[3, 4]]), torch.zeros(1, 5), *past),
                 inputs, outputs, staging / "model.onnx", decoder_axes(inputs + outputs))
    share_weights([staging / "model.onnx"], staging / "weights.bin")
    os.replace(staging, path.parent)
    return path


def pytorch_rates(prompts_ids: list[list[int]], new_tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from ...export.decoder.source import built_in_directory

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


def token_agreement(session, ids: list[int], tokens: list[int]) -> float:
    """Share of generated tokens that full-depth fp32 would have chosen after the same prefix."""
    if not tokens:
        return 1.0
    logits = session.sequence_logits(ids + tokens)[len(ids) - 1:-1]
    masked = logits.copy()
    masked[:, list(session.facts.eos_ids)] = -np.inf  # the runs suppress end of sequence too
    return float(np.mean(masked.argmax(-1) == np.array(tokens)))


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
    if any("token_agreement" in r for r in rows):
        summary["token_agreement"] = float(np.mean([r.get("token_agreement", 1.0) for r in rows]))
    if any("restarts" in r for r in rows):
        summary["restart_share"] = float(np.mean([r["restarts"] for r in rows]))
        summary["restart_changed_share"] = float(np.mean([r["restart_changed"] for r in rows]))
    if any("mean_blocks" in r for r in rows):
        summary["mean_blocks"] = float(np.mean([r["mean_blocks"] for r in rows]))
    return summary


def restart_threshold(session, prompts_ids: list[list[int]], new_tokens: int) -> tuple[float, dict]:
    """The q8 answers' lowest token log-probability on calibration prompts; restarting below the
    median redoes about half of them."""
    lows = [session.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, precision="q8").min_log_prob
            for ids in prompts_ids]
    threshold = float(np.median(lows))
    return threshold, {"calibration_prompts": len(prompts_ids), "threshold_min_log_prob": threshold,
                       "rule": "median of the q8 answers' lowest token log-probability"}


class GenaiPeer:
    """Greedy decoding by onnxruntime-genai on a model its builder wrote (fused GroupQueryAttention,
    SkipSimplifiedLayerNormalization): the generative stack users would pick instead."""

    def __init__(self, folder: Path):
        import onnxruntime_genai as og  # the peers extra, never the runtime's

        config = og.Config(str(folder))
        config.clear_providers()
        self.og, self.model = og, og.Model(config)

    def generate(self, ids: list[int], new_tokens: int, eos: tuple[int, ...]) -> tuple[list[int], float, float]:
        params = self.og.GeneratorParams(self.model)
        total = len(ids) + new_tokens  # min_length keeps end-of-sequence away, as the other rows do
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = self.og.Generator(self.model, params)
        started = time.perf_counter()
        generator.append_tokens(np.array(ids, dtype=np.int32))
        out: list[int] = []
        first = 0.0
        while not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
            if len(out) == 1:
                first = time.perf_counter() - started
        return out, first * 1000, (time.perf_counter() - started) * 1000


class LlamaCppPeer:
    """Greedy decoding by llama.cpp (llama-cpp-python) on a GGUF file of the same weights: the peer
    for laptops and phones. Its logits pick the token, end of sequence suppressed as for every row."""

    def __init__(self, gguf: Path, threads: int = 2):
        from llama_cpp import Llama  # the peers extra, never the runtime's

        self.model = Llama(model_path=str(gguf), n_ctx=2048, n_batch=512, n_threads=threads,
                           n_threads_batch=threads, verbose=False)

    def generate(self, ids: list[int], new_tokens: int, eos: tuple[int, ...]) -> tuple[list[int], float, float]:
        started = time.perf_counter()
        self.model.reset()
        out: list[int] = []
        first = 0.0
        feed = list(ids)
        while len(out) < new_tokens:
            self.model.eval(feed)  # keeps only the last token's logits, read from the context directly
            row = np.ctypeslib.as_array(self.model._ctx.get_logits(), shape=(self.model.n_vocab(),)).copy()
            row[list(eos)] = -np.inf
            out.append(int(row.argmax()))
            feed = [out[-1]]
            if len(out) == 1:
                first = time.perf_counter() - started
        return out, first * 1000, (time.perf_counter() - started) * 1000


def speed_section(session, monolith: "Monolith", prompts_ids: list[list[int]], calib_ids: list[list[int]],
                  new_tokens: int, peers: dict[str, "GenaiPeer | LlamaCppPeer"] | None = None) -> dict:
    threshold, restart_record = restart_threshold(session, calib_ids, new_tokens)
    others = [v for v in session.precisions() if v not in ("fp32", "q8")]  # q4, int8: the Pareto set's other points
    configs: list[tuple[str, dict]] = [
        ("edgeinfer full depth fp32", {}), ("edgeinfer q8 variant", {"precision": "q8"}),
        *((f"edgeinfer {v} variant", {"precision": v}) for v in others), *SPECULATIVE,
        ("q8, speculative with context drafts", {"precision": "q8", "mode": "speculative"}),
        (f"early exit, calibrated for {EARLY_EXIT_LEVEL}", {"mode": "early-exit", "agreement": EARLY_EXIT_LEVEL}),
        ("q8, restart at fp32 when unsure", {"precision": "q8", "restart_below": threshold})]
    exact = {"edgeinfer full depth fp32", *(name for name, _ in SPECULATIVE)}
    baselines = {"onnxruntime monolithic fp32": monolith, **(peers or {})}
    results: dict[str, list[dict]] = {**{name: [] for name in baselines}, **{name: [] for name, _ in configs}}
    for _, options in configs:  # warm-up: every session opens
        session.generate(prompts_ids[0], max_new_tokens=4, **options)
    for baseline in baselines.values():
        baseline.generate(prompts_ids[0], 4, session.facts.eos_ids)
    with progress_bar(len(prompts_ids) * (len(configs) + len(baselines)), "decoding") as bar:
        for ids in prompts_ids:
            for name, baseline in baselines.items():
                tokens, first, total = baseline.generate(ids, new_tokens, session.facts.eos_ids)
                results[name].append(_rate(tokens, first, total))
                bar.update()
            for name, options in configs:
                got = session.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
                trace = got.trace
                row = _rate(list(got.token_ids), trace.first_token_ms, trace.total_ms)
                row.update(drafted=trace.drafted, accepted=trace.accepted)
                if "restart_below" in options:
                    row.update(restarts=trace.restarts, restart_changed=trace.restart_changed)
                if trace.exit_blocks:
                    row["mean_blocks"] = float(np.mean(trace.exit_blocks))
                results[name].append(row)
                bar.update()
    for name, rows in results.items():  # quality after timing, so it never competes with it
        if name not in exact:
            for ids, row in zip(prompts_ids, rows):
                row["token_agreement"] = token_agreement(session, ids, row["tokens"])
    results["pytorch eager fp32"] = pytorch_rates(prompts_ids, new_tokens)
    reference = [r["tokens"] for r in results["edgeinfer full depth fp32"]]
    base = float(np.median([r["tokens_per_s"] for r in results["edgeinfer full depth fp32"]]))
    order = ["pytorch eager fp32", *baselines, *(name for name, _ in configs)]
    rows = [summarize(name, results[name], reference, base) for name in order]
    return {"rows": rows, "pareto": pareto_front(rows, exact), "restart": restart_record}


def pareto_front(rows: list[dict], exact: set[str]) -> list[str]:
    """The rows no other row beats on both tokens/s and token agreement with fp32 (rows that are
    fp32's output by construction count as agreement 1; rows without the figure are left out)."""
    points = [(r["config"], r["tokens_per_s_median"], 1.0 if r["config"] in exact else r["token_agreement"])
              for r in rows if r["config"] in exact or "token_agreement" in r]
    return [name for name, rate, agreement in points
            if not any(r2 >= rate and a2 >= agreement and (r2 > rate or a2 > agreement) for _, r2, a2 in points)]


def long_prompts(shared: Path, session, count: int, target_tokens: int = 512) -> list[list[int]]:
    """News texts joined until the chat prompt reaches about `target_tokens` tokens."""
    rows = (shared / "data" / "agnews" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = [row.split("\t")[0].strip() for row in rows[300:] if row.strip()]
    prompts, at = [], 0
    while len(prompts) < count and at < len(texts):
        body = ""
        while at < len(texts) and len(session.encode("Summarize these news items:\n" + body)) < target_tokens:
            body += texts[at] + "\n"
            at += 1
        ids = session.encode("Summarize these news items:\n" + body)
        prompts.append(ids[:8] + ids[-(target_tokens - 8):] if len(ids) > target_tokens else ids)
    return prompts


def first_token_section(session, peers: dict[str, "GenaiPeer | LlamaCppPeer"], prompts_ids: list[list[int]]) -> dict:
    """Time to the first new token on long prompts: the prefill, where batched matrix products and
    the attention kernel count, not the weights' bytes. Rows alternate prompt by prompt."""
    configs = [("edgeinfer full depth fp32", {}), ("edgeinfer q8 variant", {"precision": "q8"}),
               (f"edgeinfer fp32, {PRUNING[0][0]} (lossy)", {"prune_prompt": PRUNING[0][1]})]
    eos = session.facts.eos_ids
    for _, options in configs:
        session.generate(prompts_ids[0], max_new_tokens=1, **options)
    for peer in peers.values():
        peer.generate(prompts_ids[0], 1, eos)
    times: dict[str, list[float]] = {name: [] for name in [*peers, *(name for name, _ in configs)]}
    with progress_bar(len(prompts_ids) * len(times), "first token on long prompts") as bar:
        for ids in prompts_ids:
            for name, peer in peers.items():
                times[name].append(peer.generate(ids, 1, eos)[1])
                bar.update()
            for name, options in configs:
                times[name].append(session.generate(ids, max_new_tokens=1, min_new_tokens=1, **options)
                                   .trace.first_token_ms)
                bar.update()
    rows = [{"config": name, "first_token_ms_median": float(np.median(t)), "first_token_ms_p90": float(np.percentile(t, 90))}
            for name, t in times.items()]
    return {"prompts": len(prompts_ids), "prompt_tokens_median": float(np.median([len(i) for i in prompts_ids])),
            "rows": rows}


def pruning_section(session, prompts_ids: list[list[int]], new_tokens: int = 16) -> dict:
    configs = [("no pruning", ()), *PRUNING]
    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for _, schedule in configs:
        session.generate(prompts_ids[0], max_new_tokens=2, prune_prompt=schedule)
    with progress_bar(len(prompts_ids) * len(configs), "prompt pruning") as bar:
        for ids in prompts_ids:
            for name, schedule in configs:
                got = session.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, prune_prompt=schedule)
                results[name].append({"tokens": list(got.token_ids), "first_token_ms": got.trace.first_token_ms,
                                      "kv_bytes": got.trace.kv_bytes})
                bar.update()
    reference = results["no pruning"]
    base_ttft = float(np.median([r["first_token_ms"] for r in reference]))
    rows = []
    for name, _ in configs:
        rows_ = results[name]
        ttft = float(np.median([r["first_token_ms"] for r in rows_]))
        rows.append({"config": name, "prompts": len(rows_), "prompt_tokens_median": float(np.median([len(i) for i in prompts_ids])),
                     "first_token_ms_median": ttft, "first_token_vs_unpruned": ttft / base_ttft,
                     "next_token_agreement": float(np.mean([r["tokens"][0] == ref["tokens"][0] for r, ref in zip(rows_, reference)])),
                     "identical_continuations": float(np.mean([r["tokens"] == ref["tokens"] for r, ref in zip(rows_, reference)])),
                     "token_agreement": float(np.mean([token_agreement(session, ids, r["tokens"])
                                                       for ids, r in zip(prompts_ids, rows_)])),
                     "kv_bytes_median": float(np.median([r["kv_bytes"] for r in rows_]))})
    return {"new_tokens": new_tokens, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--long-prompts", type=int, default=12)
    parser.add_argument("--out", default="reports/decoder")
    parser.add_argument("--genai", default=None, help="a model folder from onnxruntime-genai's builder, run beside")
    parser.add_argument("--gguf", action="append", default=[], metavar="NAME=PATH",
                        help="a GGUF file of the same weights for llama.cpp, e.g. F16=smol-f16.gguf (repeatable)")
    parser.add_argument("--package", default=None, help="a SmolLM2 package with a q8 variant (default: exported "
                                                           "once into the user cache)")
    args = parser.parse_args(argv)
    cache = cache_root() / "bench"
    package = Path(args.package) if args.package else bench_package(cache)
    import edgeinfer

    session = edgeinfer.load(package)
    facts = session.facts
    shared = Path(args.shared)
    prompts_ids = [session.encode(p) for p in read_prompts(shared, args.prompts)]
    calib_ids = [session.encode(p) for p in read_prompts(shared, 16, skip=200)]
    monolith = Monolith(monolith_graph(cache, package), session.num_blocks, facts.num_kv_heads, facts.head_dim)
    peers: dict[str, GenaiPeer | LlamaCppPeer] = {}
    if args.genai:
        peers["onnxruntime-genai fp32 (its builder)"] = GenaiPeer(Path(args.genai))
    for spec in args.gguf:
        name, _, path = spec.partition("=")
        peers[f"llama.cpp {name}"] = LlamaCppPeer(Path(path))
    speed = speed_section(session, monolith, prompts_ids, calib_ids, args.new_tokens, peers)
    long = long_prompts(shared, session, args.long_prompts)
    first_token = first_token_section(session, peers, long)
    pruning = pruning_section(session, long)
    document = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to fp32)", "machine": platform.machine(),
                "threads": os.cpu_count(), "prompts": len(prompts_ids), "new_tokens": args.new_tokens,
                "prompt_tokens_median": float(np.median([len(i) for i in prompts_ids])), **speed,
                "first_token": first_token, "pruning": pruning, "exits": session.manifest.calibration,
                "exit_levels": [{"agreement": t.agreement, "thresholds": list(t.thresholds),
                                 "expected_mean_blocks": t.expected_mean_depth} for t in session.manifest.exit_thresholds],
                "q8_quality": session.manifest.precision_variant("q8").quality}
    out = Path(args.out)
    write_json(out / "decoder.json", document)
    write_atomically(out / "decoder.md", markdown(document))
    print(markdown(document))
    return 0


def _cell(row: dict, key: str, form: str) -> str:
    return format(row[key], form) if key in row else "-"


def markdown(document: dict) -> str:
    lines = [f"SmolLM2-135M, batch 1, {document['prompts']} prompts (median {document['prompt_tokens_median']:.0f} "
             f"tokens), {document['new_tokens']} new tokens each; ratios of medians, measured side by side", "",
             "| configuration | tokens/s (median) | p10 | vs full fp32 | first token ms | identical to full fp32 "
             "| token agreement | draft acceptance | restarts (changed) | mean blocks |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in document["rows"]:
        restarts = f"{row['restart_share']:.0%} ({row['restart_changed_share']:.0%})" if "restart_share" in row else "-"
        lines.append(f"| {row['config']} | {row['tokens_per_s_median']:.1f} | {row['tokens_per_s_p10']:.1f} | "
                     f"{row.get('speedup_vs_full_fp32', float('nan')):.2f}x | {row['first_token_ms_median']:.0f} | "
                     f"{row['identical_to_full_fp32']:.0%} | {_cell(row, 'token_agreement', '.3f')} | "
                     f"{_cell(row, 'draft_acceptance', '.3f')} | {restarts} | {_cell(row, 'mean_blocks', '.1f')} |")
    if document.get("pareto"):
        lines += ["", "Pareto front of (tokens/s, token agreement with fp32; exact rows count as 1): "
                  + ", ".join(document["pareto"])]
    first = document.get("first_token")
    if first:
        lines += ["", f"First token on {first['prompts']} long prompts (median {first['prompt_tokens_median']:.0f} "
                      f"tokens), alternated prompt by prompt", "", "| configuration | first token ms (median) | p90 |",
                  "|---|---:|---:|"]
        lines += [f"| {row['config']} | {row['first_token_ms_median']:.0f} | {row['first_token_ms_p90']:.0f} |"
                  for row in first["rows"]]
    pruning = document["pruning"]
    lines += ["", f"Prompt pruning, {pruning['rows'][0]['prompts']} prompts of median "
                  f"{pruning['rows'][0]['prompt_tokens_median']:.0f} tokens, {pruning['new_tokens']} new tokens", "",
              "| schedule | first token ms (median) | vs unpruned | next-token agreement | identical continuations "
              "| token agreement | KV cache MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in pruning["rows"]:
        lines.append(f"| {row['config']} | {row['first_token_ms_median']:.0f} | {row['first_token_vs_unpruned']:.2f}x | "
                     f"{row['next_token_agreement']:.0%} | {row['identical_continuations']:.0%} | "
                     f"{row['token_agreement']:.3f} | {row['kv_bytes_median'] / 2**20:.1f} |")
    exits = document.get("exits", {}).get("exit_agreement_with_final", {})
    if exits:
        lines += ["", "Shared-head exits (teacher-forced, calibration prompts): agreement with the final token "
                  + ", ".join(f"after block {k}: {v:.3f}" for k, v in exits.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
