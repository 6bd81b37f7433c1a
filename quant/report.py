"""The quantization report: Pareto fronts (table and plot), the chosen plan per node, and how well
the value-driven proxy ranks nodes against measured sensitivity."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path


from ..bench.report_files import write_atomically, write_json
from .mixed_precision import PLAN_TOKENS, Analysis, fronts, uniform_plan
from .quantize import QuantizeResult


def proxy_agreement(analysis: Analysis) -> dict[str, float] | None:
    """Spearman rank correlation of proxy vs measured node errors, per candidate and pooled."""
    if not analysis.measured:
        return None
    from scipy.stats import spearmanr

    keys = [k for k in analysis.measured if k in analysis.proxy]
    out = {"pooled": float(spearmanr([analysis.measured[k] for k in keys], [analysis.proxy[k] for k in keys])[0])}
    for candidate in sorted({k[1] for k in keys}):
        part = [k for k in keys if k[1] == candidate]
        out[candidate] = float(spearmanr([analysis.measured[k] for k in part], [analysis.proxy[k] for k in part])[0])
    return out


def quant_document(result: QuantizeResult) -> dict:
    analysis = result.analysis
    variant = result.manifest.precision_variants[-1]
    document = {
        "variant": variant.name, "bytes": variant.bytes, "quality": variant.quality,
        "predicted": {"bytes": result.predicted[0], "latency_ms": result.predicted[1], "error": result.predicted[2],
                      "at_tokens": PLAN_TOKENS},
        "fp32_predicted": dict(zip(("bytes", "latency_ms", "error"), analysis.predicted({}))),
        "uniform_int8_predicted": dict(zip(("bytes", "latency_ms", "error"),
                                           analysis.predicted(uniform_plan(analysis, "int8")))),
        "seconds": analysis.seconds, "proxy_vs_measured_spearman": proxy_agreement(analysis),
        "block_gains": list(analysis.gains),
        "nodes": [{"node": n.name, "op": n.op_type, "shape": list(n.shape), "precision": result.plan.get(n.name, "fp32"),
                   **({"outlier_ratio": round(s.outlier_ratio, 3), "kurtosis": round(s.kurtosis, 2),
                       "entropy_bits": round(s.entropy_bits, 3)} if (s := analysis.stats.get(n.name)) else {})}
                  for n in analysis.nodes],
        "fronts": {},
        "measured": [{"name": m.name, "predicted_ms": round(m.predicted_ms, 4), "measured_ms": round(m.measured_ms, 4),
                      "fp32_ms": round(m.fp32_ms, 4), "speedup": round(m.speedup, 4),
                      "prediction_error": round(m.prediction_error, 4), "output_error": m.output_error,
                      "agreement_with_fp32": m.agreement_with_fp32, "mean_cosine_to_fp32": m.mean_cosine_to_fp32,
                      "lowered": dict(sorted(Counter(p for p in m.plan.values() if p != "fp32").items()))}
                     for m in result.measured],
    }
    for cost in ("bytes", "latency"):
        for search, plans in fronts(analysis, cost).items():
            document["fronts"][f"{cost}/{search}"] = [{"cost": round(p.cost, 5), "error": p.error} for p in plans]
    return document


def write_quant_report(result: QuantizeResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    document = quant_document(result)
    write_json(folder / "quant.json", document)
    write_atomically(folder / "quant.md", quant_markdown(document))
    plot_fronts(document, folder / "pareto.png")


def quant_markdown(document: dict) -> str:
    quality = document["quality"]
    lines = [f"# Precision variant `{document['variant']}`", "",
             f"- bytes: {document['bytes'] / 1e6:.1f} MB (fp32 {document['fp32_predicted']['bytes'] / 1e6:.1f} MB)",
             f"- predicted latency at {document['predicted']['at_tokens']} tokens: "
             f"{document['predicted']['latency_ms']:.2f} ms (fp32 {document['fp32_predicted']['latency_ms']:.2f} ms)",
             f"- measured on {quality['calibration_examples']} calibration texts: "
             + ", ".join(f"{k} {quality[k]}" for k in ("agreement_with_fp32", "mean_cosine_to_fp32", "output_error")
                         if k in quality),
             f"- analysis seconds: {document['seconds']}"]
    if document["proxy_vs_measured_spearman"]:
        lines.append("- proxy vs measured sensitivity (Spearman): " + ", ".join(
            f"{k} {v:.3f}" for k, v in document["proxy_vs_measured_spearman"].items()))
    if document["measured"]:
        lines += ["", f"## Measured as they run (at {document['predicted']['at_tokens']} tokens, each beside fp32 in "
                      "alternating rounds)", "",
                  "| plan | lowered nodes | predicted ms | measured ms | speed-up vs fp32 | prediction error | "
                  "agreement / cosine with fp32 | output error |", "|---|---|---|---|---|---|---|---|"]
        for m in document["measured"]:
            close = m["agreement_with_fp32"] if m["agreement_with_fp32"] is not None else m["mean_cosine_to_fp32"]
            lowered = ", ".join(f"{n} {p}" for p, n in m["lowered"].items()) or "none"
            lines.append(f"| {m['name']} | {lowered} | {m['predicted_ms']:.2f} | {m['measured_ms']:.2f} | "
                         f"{m['speedup']:.3f}x | {m['prediction_error']:+.1%} | {close:.4f} | {m['output_error']:.3g} |")
    for key, plans in document["fronts"].items():
        unit = "MB" if key.startswith("bytes") else "ms"
        lines += ["", f"## Pareto front, {key} (predicted error vs {unit})", "", f"| {unit} | error |", "|---|---|"]
        step = max(1, len(plans) // 12)
        lines += [f"| {p['cost']:.3f} | {p['error']:.3g} |" for p in plans[::step]]
    lines += ["", "## Plan per node", "", "| node | op | shape | precision | outlier ratio | kurtosis | entropy (bits) |",
              "|---|---|---|---|---|---|---|"]
    for n in document["nodes"]:
        lines.append(f"| {n['node']} | {n['op']} | {'x'.join(map(str, n['shape']))} | {n['precision']} | "
                     f"{n.get('outlier_ratio', '')} | {n.get('kurtosis', '')} | {n.get('entropy_bits', '')} |")
    return "\n".join(lines) + "\n"


def plot_fronts(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, cost, unit in ((axes[0], "bytes", "MB"), (axes[1], "latency", "ms")):
        for search, style in (("greedy", "o-"), ("dp", "x--")):
            plans = document["fronts"].get(f"{cost}/{search}", [])
            axis.plot([p["cost"] for p in plans], [max(p["error"], 1e-9) for p in plans], style, ms=3, label=search)
        axis.set_yscale("log")
        axis.set_xlabel(f"predicted {unit}")
        axis.set_ylabel("predicted output error")
        axis.legend()
    figure.tight_layout()
    temporary = path.parent / f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
