"""The SST-2 package on LiteRT beside onnxruntime, measured in one run.

    python -m edgeinfer.bench.studies.litert_bench [--package SST2.edge] [--data dev.tsv] [--report reports/litert]

1. Same predictions: full depth on LiteRT vs onnxruntime over every dev sentence.
2. Adaptive runtime: the agreement with the full model each backend reaches at the calibrated
   level (exits), and with pruning, on the same sentences.
3. Bucketing overhead: the full graph at 40 tokens padded to the 64 bucket vs a graph converted at
   exactly 40 tokens (and onnxruntime at 40), interleaved call by call.
4. Latency per token count, LiteRT vs onnxruntime full graph, interleaved.

The package is the cached SST-2 heads package (bench/sst2_runtime.py) with LiteRT graphs added by
`edgeinfer convert --to litert`; it is converted here when missing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ...export.calibration_data import read_examples
from ...manifest import LiteRTGraphs
from ...progress import progress_bar
from ...runtime.litert_graphs import LiteRTFile, LiteRTGraph
from ...runtime.policy import Policy, default_keep_schedule
from ...runtime.load import load
from ...runtime.sessions import default_threads, open_session
from ...runtime.user_cache import cache_root
from ..report_files import write_atomically, write_json
from ..timing import latency_summary

LEVEL = 0.99
PADDED_TOKENS = 40


def litert_package(heads: Path, out: Path) -> Path:
    from ...export.litert import convert_package
    from ...runtime.package import open_package

    try:
        if open_package(out).manifest.litert is not None:
            return out
    except Exception:  # missing or stale: convert again
        pass
    convert_package(heads, output=out, force=True)
    return out


def same_predictions(package: Path, texts: list[str], labels: np.ndarray | None) -> dict:
    onnx = load(package, policy=Policy.off(), profile=None)
    litert = load(package, target="litert-cpu", policy=Policy.off(), profile=None)
    a = np.array([r.probabilities for r in onnx.run(texts)])
    b = np.array([r.probabilities for r in litert.run(texts)])
    record = {"inputs": len(texts), "same_prediction": round(float((a.argmax(1) == b.argmax(1)).mean()), 6),
              "max_abs_probability_diff": float(np.abs(a - b).max())}
    if labels is not None:
        record.update(accuracy_onnxruntime=round(float((a.argmax(1) == labels).mean()), 4),
                      accuracy_litert=round(float((b.argmax(1) == labels).mean()), 4))
    return record


def adaptive_agreement(package: Path, texts: list[str], labels: np.ndarray | None) -> list[dict]:
    """Each backend's adaptive points, against the onnxruntime full model (the reference answer)."""
    reference = load(package, policy=Policy.off(), profile=None)
    full = np.array([r.probabilities.argmax() for r in reference.run(texts)])
    manifest = reference.manifest
    blocks = manifest.model.num_blocks
    points = {f"exits@{LEVEL}": Policy(agreement=LEVEL, precision="fp32"),
              f"exits@{LEVEL} + prune": Policy(agreement=LEVEL, keep_schedule=default_keep_schedule(blocks), precision="fp32")}
    runs = [(name, policy, target) for name, policy in points.items() for target in ("cpu", "litert-cpu")]
    for variant in manifest.precision_variants:  # each runs where its graphs are
        target = "litert-cpu" if manifest.litert is not None and variant.name in manifest.litert.files else "cpu"
        runs.append((f"cascade {variant.name}@{LEVEL} -> fp32", Policy(agreement=LEVEL, precision=variant.name), target))
    rows = []
    for name, policy, target in runs:
        results = load(package, target=target, policy=policy, profile=None).run(texts)
        predicted = np.array([r.probabilities.argmax() for r in results])
        row = {"point": name, "target": target, "agreement_with_full": round(float((predicted == full).mean()), 4),
               "mean_depth": round(float(np.mean([r.trace.exit_after_block for r in results])), 3),
               "restart_rate": round(float(np.mean([r.trace.restarts > 0 for r in results])), 4)}
        if labels is not None:
            row["accuracy"] = round(float((predicted == labels).mean()), 4)
        rows.append(row)
    return rows


def _in_blocks(calls: dict[str, Callable[[], object]], rounds: int, desc: str, block: int = 10,
               settle: int = 2) -> dict[str, dict]:
    """Latency of each call, measured in alternating blocks of `block` calls with the first `settle`
    of each block dropped. Call-by-call interleaving is unfair across backends here: onnxruntime's
    and XNNPACK's pool threads spin after a run, and the other library's next call competed with
    them (LiteRT measured 24 ms at 64 tokens right after onnxruntime calls, 17 ms after its own)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with progress_bar(rounds, desc) as bar:
        for _ in range(rounds):
            for name, call in calls.items():
                for i in range(block):
                    t0 = time.perf_counter()
                    call()
                    if i >= settle:
                        times[name].append((time.perf_counter() - t0) * 1000)
            bar.update()
    return {name: latency_summary(values) for name, values in times.items()}


def bucketing_overhead(package: Path, tmp: Path, rounds: int) -> dict:
    """Full graph at 40 real tokens: padded to the 64 bucket, converted at exactly 40, onnxruntime."""
    from ...export.litert import convert_jobs
    from ...export.model_source import load_model
    from ...export.graph_jobs import build_segments, graph_jobs

    opened = load(package, target="litert-cpu", policy=Policy.off(), profile=None)
    manifest = opened.manifest
    loaded = load_model(manifest.model.source, manifest.model.task)
    full_job = next(j for j in graph_jobs(build_segments(loaded, manifest.model.task), {}) if j.name == "full")
    exact_file = tmp / "exact.tflite"
    full = manifest.segment("full")
    convert_jobs([full_job], {"full": full.inputs}, exact_file, (PADDED_TOKENS,))
    exact = LiteRTGraph(LiteRTFile(exact_file, default_threads()),
                        LiteRTGraphs({"fp32": exact_file.name}, (PADDED_TOKENS,), ("full",)), full,
                        manifest.tokenizer.pad_id)
    padded = opened.runner.graph(full)
    onnx = open_session(opened.package.path(full.graph()))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(1, PADDED_TOKENS)).astype(np.int64)
    feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
             "attention_bias": np.zeros(ids.shape, np.float32)}
    feeds = {k: feeds[k] for k in full.inputs}
    got_padded, got_exact = padded.run(None, feeds)[0], exact.run(None, feeds)[0]
    summary = _in_blocks({f"LiteRT {PADDED_TOKENS} padded to {manifest.litert.bucket_for(PADDED_TOKENS)}": lambda: padded.run(None, feeds),
                          f"LiteRT exact {PADDED_TOKENS}": lambda: exact.run(None, feeds),
                          f"onnxruntime {PADDED_TOKENS}": lambda: onnx.run(None, feeds)}, rounds, "bucketing overhead")
    names = list(summary)
    return {"tokens": PADDED_TOKENS, "bucket": manifest.litert.bucket_for(PADDED_TOKENS),
            "runs": summary[names[0]]["runs"],
            "latency": summary, "padded_over_exact": round(summary[names[0]]["p50_ms"] / summary[names[1]]["p50_ms"], 4),
            "max_abs_diff_padded_vs_exact": float(np.abs(got_padded - got_exact).max())}


def latency_by_tokens(package: Path, rounds: int) -> list[dict]:
    opened = load(package, target="litert-cpu", policy=Policy.off(), profile=None)
    full = opened.manifest.segment("full")
    litert = opened.runner.graph(full)
    onnx = open_session(opened.package.path(full.graph()))
    rows = []
    for tokens in opened.manifest.litert.buckets:
        ids = np.random.default_rng(tokens).integers(1000, 20000, size=(1, tokens)).astype(np.int64)
        feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_bias": np.zeros(ids.shape, np.float32)}
        feeds = {k: feeds[k] for k in full.inputs}
        summary = _in_blocks({"litert": lambda: litert.run(None, feeds), "onnxruntime": lambda: onnx.run(None, feeds)},
                             rounds, f"latency at {tokens} tokens")
        rows.append({"tokens": tokens, "litert_p50_ms": summary["litert"]["p50_ms"], "litert_p90_ms": summary["litert"]["p90_ms"],
                     "onnxruntime_p50_ms": summary["onnxruntime"]["p50_ms"],
                     "onnxruntime_p90_ms": summary["onnxruntime"]["p90_ms"],
                     "litert_over_onnxruntime": round(summary["litert"]["p50_ms"] / summary["onnxruntime"]["p50_ms"], 4)})
    return rows


def markdown(report: dict) -> str:
    same, bucket = report["same_predictions"], report["bucketing"]
    lines = ["# LiteRT beside onnxruntime (SST-2 MiniLM)", "",
             f"Package: {report['package']}; data: {report['data']}; {report['threads']} threads, batch 1.", "",
             f"- Full depth, same prediction on {same['inputs']} inputs: **{same['same_prediction']:.2%}** "
             f"(max probability difference {same['max_abs_probability_diff']:.1e})"
             + (f"; accuracy onnxruntime {same['accuracy_onnxruntime']:.4f}, LiteRT {same['accuracy_litert']:.4f}"
                if "accuracy_litert" in same else ""), "",
             "| point | target | agreement with full (onnxruntime) | accuracy | mean depth | restarts |",
             "|---|---|---|---|---|---|"]
    for row in report["adaptive"]:
        lines.append(f"| {row['point']} | {row['target']} | {row['agreement_with_full']:.4f} | "
                     f"{row.get('accuracy', float('nan')):.4f} | {row['mean_depth']:.2f} | {row['restart_rate']:.1%} |")
    lines += ["", f"Bucketing overhead, full graph, {bucket['runs']} timed runs each, in alternating blocks "
                  f"(p50 / p90 ms):", "",
              "| graph | p50 ms | p90 ms |", "|---|---|---|"]
    for name, stats in bucket["latency"].items():
        lines.append(f"| {name} | {stats['p50_ms']:.2f} | {stats['p90_ms']:.2f} |")
    lines += ["", f"Padded over exact: **{bucket['padded_over_exact']:.3f}x** (outputs differ by "
                  f"{bucket['max_abs_diff_padded_vs_exact']:.1e}).", "",
              "| tokens | LiteRT p50 ms | onnxruntime p50 ms | LiteRT / onnxruntime |", "|---|---|---|---|"]
    for row in report["by_tokens"]:
        lines.append(f"| {row['tokens']} | {row['litert_p50_ms']:.2f} | {row['onnxruntime_p50_ms']:.2f} | "
                     f"{row['litert_over_onnxruntime']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from .sst2_runtime import add_sst2_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sst2_arguments(parser)
    parser.add_argument("--litert-package", default=str(cache_root() / "bench" / "sst2-heads-litert.edge"))
    parser.add_argument("--rounds", type=int, default=25, help="blocks of 10 calls per graph (8 timed)")
    parser.add_argument("--report", default="reports/litert")
    args = parser.parse_args()
    package = litert_package(Path(args.package), Path(args.litert_package))
    examples = read_examples(Path(args.data), open_labels(package))
    texts = list(examples.texts)
    labels = np.array(examples.labels) if examples.labels is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        report = {"package": str(package), "data": args.data, "threads": default_threads(),
                  "same_predictions": same_predictions(package, texts, labels),
                  "adaptive": adaptive_agreement(package, texts, labels),
                  "bucketing": bucketing_overhead(package, Path(tmp), args.rounds),
                  "by_tokens": latency_by_tokens(package, args.rounds)}
    out = Path(args.report)
    write_json(out / "litert.json", report)
    write_atomically(out / "litert.md", markdown(report))
    print(markdown(report))
    print(json.dumps(report["same_predictions"]))


def open_labels(package: Path) -> tuple[str, ...] | None:
    from ...runtime.package import open_package

    return open_package(package, verify=False).manifest.model.labels


if __name__ == "__main__":
    main()
