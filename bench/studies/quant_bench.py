"""The quantization benchmark the project keeps: per-node mixed precision on the SST-2
MiniLM and on all-MiniLM-L6-v2, every plan measured side by side in one run.

    python -m edgeinfer.bench.studies.quant_bench [--shared ../shared] [--report reports/quant]

SST-2: node errors measured one node at a time (and estimated by the proxy) on 256 sentence-like
train rows; plans are uniform int8 per-channel, uniform int4, mixed at uniform int8's bytes, mixed
at 30% fewer bytes, and mixed for a latency budget; each is lowered and its accuracy measured on
all of sst2/dev.tsv, which nothing was fitted on. MiniLM embeddings: the proxy-driven plan for a
budget of 0.35x the fp32 bytes, mean cosine to fp32 on the SST-2 dev sentences. Latencies are
medians of 30 runs at 64 tokens after 5 warm-ups, 2 threads, batch 1.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ...export.calibration_data import read_examples
from ...export.exit_quality import cosine_rows
from ...quant.apply_plan import apply_plan
from ...quant.mixed_precision import PLAN_TOKENS, analyse, choose_plan, full_model
from ...quant.output_error import calibration_batches
from ...quant.model_latency import fp32_latency_ms, full_graph_latency_ms
from ...quant.report import proxy_agreement
from ...runtime.package import open_package
from ..report_files import write_atomically, write_json
from .sst2_runtime import sst2_package

ANALYSIS_ROWS = 256


def _sorted_by_length(texts: list[str], labels: list[int] | None) -> tuple[list[str], np.ndarray | None]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # the order calibration_batches runs them in
    return [texts[i] for i in order], (np.array([labels[i] for i in order]) if labels is not None else None)


def _plans(analysis, latency_budget_ms: float) -> dict[str, dict[str, str]]:
    int8_mb = analysis.predicted(choose_plan(analysis, "int8"))[0] / 1e6
    return {"fp32": {}, "int8 per-channel (uniform)": choose_plan(analysis, "int8"),
            "int4 block 32 (uniform)": choose_plan(analysis, "int4"),
            f"mixed at int8 bytes ({int8_mb:.1f} MB)": choose_plan(analysis, "mixed", size_budget_mb=int8_mb),
            f"mixed at 0.7x int8 bytes ({0.7 * int8_mb:.1f} MB)": choose_plan(analysis, "mixed", size_budget_mb=0.7 * int8_mb),
            f"mixed for {latency_budget_ms:.2f} ms at {PLAN_TOKENS} tokens": choose_plan(
                analysis, "mixed", latency_budget_ms=latency_budget_ms)}


def _evaluate(package, analysis, plans, model, batches, labels) -> list[dict]:
    by_name = {n.name: n.digest for n in analysis.nodes}
    rows = []
    for name, plan in plans.items():
        lowered = apply_plan(model, {by_name[k]: v for k, v in plan.items()})
        serialized = lowered.SerializeToString()
        outputs = batches.outputs(serialized)
        bytes_, predicted_ms, predicted_error = analysis.predicted(plan)
        measured_ms = full_graph_latency_ms(serialized, package.manifest)
        row = {"plan": name, "bytes_mb": round(len(serialized) / 1e6, 2), "predicted_mb": round(bytes_ / 1e6, 2),
               "predicted_ms": round(predicted_ms, 3), "measured_ms": round(measured_ms, 3),
               "prediction_error": round(measured_ms / predicted_ms - 1, 4), "predicted_error": predicted_error,
               "precisions": {c: list(plan.values()).count(c) for c in sorted(set(plan.values()))}}
        if labels is not None:
            row["accuracy"] = round(float((outputs.argmax(-1) == labels).mean()), 4)
            row["agreement_with_fp32"] = round(float((outputs.argmax(-1) == batches.reference.argmax(-1)).mean()), 4)
        else:
            row["mean_cosine_to_fp32"] = round(float(cosine_rows(outputs, batches.reference).mean()), 5)
        rows.append(row)
    return rows


def sst2_part(shared: Path, cache: Path, sensitivity: str) -> dict:
    package_path, sentences = sst2_package(shared, cache)
    package = open_package(package_path)
    texts = list(read_examples(sentences, None).split(ANALYSIS_ROWS, 0, seed=3)[0].texts)
    fp32_ms = fp32_latency_ms(package.root, package.manifest)
    analysis, _ = analyse(package, texts, sensitivity, model_latency_ms=fp32_ms)
    dev = read_examples(shared / "data" / "sst2" / "dev.tsv", package.manifest.model.labels)
    dev_texts, labels = _sorted_by_length(list(dev.texts), list(dev.labels))
    model = full_model(package)
    batches = calibration_batches(package, model, dev_texts)
    plans = _plans(analysis, latency_budget_ms=0.75 * fp32_ms)
    return {"package": str(package_path), "analysis_rows": len(texts), "dev_rows": len(dev_texts),
            "fp32_ms_at_64_tokens": round(fp32_ms, 3), "seconds": analysis.seconds,
            "proxy_vs_measured_spearman": proxy_agreement(analysis),
            "plans": _evaluate(package, analysis, plans, model, batches, labels)}


def minilm_part(shared: Path, cache: Path) -> dict:
    from ...export.pipeline import ExportOptions, export_model

    package_path = cache / "minilm.edge"
    if not package_path.exists():
        export_model("minilm", package_path, ExportOptions(task="feature-extraction"))
    package = open_package(package_path)
    sentences = list(read_examples(shared / "data" / "sst2" / "train.tsv", None, use_labels=False).texts)
    texts = [t for t in sentences if len(t.split()) >= 8][:ANALYSIS_ROWS]
    fp32_ms = fp32_latency_ms(package.root, package.manifest)
    analysis, _ = analyse(package, texts, "proxy", model_latency_ms=fp32_ms)
    fp32_mb = analysis.predicted({})[0] / 1e6
    dev = list(read_examples(shared / "data" / "sst2" / "dev.tsv", None, use_labels=False).texts)
    dev_texts, _ = _sorted_by_length(dev, None)
    model = full_model(package)
    batches = calibration_batches(package, model, dev_texts)
    plans = {"fp32": {}, "int8 per-channel (uniform)": choose_plan(analysis, "int8"),
             "int4 block 32 (uniform)": choose_plan(analysis, "int4"),
             f"mixed at 0.35x fp32 bytes ({0.35 * fp32_mb:.1f} MB)": choose_plan(analysis, "mixed",
                                                                                size_budget_mb=0.35 * fp32_mb)}
    return {"package": str(package_path), "analysis_rows": len(texts), "dev_rows": len(dev_texts),
            "seconds": analysis.seconds, "plans": _evaluate(package, analysis, plans, model, batches, None)}


def markdown(report: dict) -> str:
    lines = ["# Quantization benchmark", ""]
    for part in ("sst2", "minilm"):
        if part not in report:
            continue
        data = report[part]
        lines += [f"## {part}: {data['package']}", "",
                  f"analysis on {data['analysis_rows']} train rows, evaluation on {data['dev_rows']} dev rows; "
                  f"analysis seconds {data['seconds']}"]
        if data.get("proxy_vs_measured_spearman"):
            lines.append("proxy vs measured sensitivity (Spearman): " + ", ".join(
                f"{k} {v:.3f}" for k, v in data["proxy_vs_measured_spearman"].items()))
        quality = "accuracy | agreement" if part == "sst2" else "mean cosine to fp32"
        lines += ["", f"| plan | MB (predicted) | {quality} | ms measured | ms predicted | prediction error |",
                  "|---|---|---|---|---|---|" + ("---|" if part == "sst2" else "")]
        for row in data["plans"]:
            q = f"{row['accuracy']:.4f} | {row['agreement_with_fp32']:.4f}" if "accuracy" in row \
                else f"{row['mean_cosine_to_fp32']:.5f}"
            lines.append(f"| {row['plan']} | {row['bytes_mb']:.1f} ({row['predicted_mb']:.1f}) | {q} | "
                         f"{row['measured_ms']:.2f} | {row['predicted_ms']:.2f} | {row['prediction_error']:+.1%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/edgeinfer/bench"))
    parser.add_argument("--report", default="reports/quant")
    parser.add_argument("--sensitivity", choices=["proxy", "measured"], default="measured")
    parser.add_argument("--parts", default="sst2,minilm")
    args = parser.parse_args(argv)
    shared, cache, out = Path(args.shared), Path(args.cache), Path(args.report)
    report = {"threads": 2, "tokens": PLAN_TOKENS}
    if "minilm" in args.parts:
        report["minilm"] = minilm_part(shared, cache)
    if "sst2" in args.parts:
        report["sst2"] = sst2_part(shared, cache, args.sensitivity)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quant_bench.json", report)
    write_atomically(out / "quant_bench.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
