"""The runtime benchmark the project keeps: edgeinfer's adaptive configurations beside a
monolithic onnxruntime session of the same model (fp32 and int8), in one process, on the same
inputs, interleaved input by input so that machine noise hits every configuration alike.

    python -m edgeinfer.bench.studies.runtime_bench PACKAGE --data DEV.tsv [--model HF_DIR] [--report DIR]

Figures: accuracy, agreement with the package's own full model (edgeinfer off), latency mean/p50/p90/p99 and the ratio
to the monolithic fp32 mean, mean depth, tokens per block, deadline compliance, and the overhead of
the segmented runtime with every adaptive feature off at fixed token counts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...export.calibration_data import read_examples
from ...runtime.policy import Budget, Policy, softmax
from ...runtime.load import load
from ...runtime.encoder.session import EdgeSession
from ...runtime.memory import memory_need
from ..baselines import MonolithicModel, export_monolithic, quantize_int8
from ..interleaved import TURN, default_settle, measure_interleaved, regime
from ..peak_memory import peak_rss_of_run
from ..report_files import write_atomically, write_json
from ..timing import latency_summary

WARMUP = 10


@dataclass(frozen=True)
class Configuration:
    name: str
    answer: Callable[[str], tuple[int, int, list[int], bool, int]]  # label, depth, tokens/block, cut, restarts


def _edgeinfer(name: str, session: EdgeSession) -> Configuration:
    labels = list(session.manifest.model.labels or [])

    def answer(text: str):
        result = session.run(text)
        return labels.index(result.label), result.trace.exit_after_block, list(result.trace.tokens_per_block), \
            result.trace.deadline_cut, result.trace.restarts
    return Configuration(name, answer)


def _monolithic(name: str, model: MonolithicModel, session: EdgeSession) -> Configuration:
    blocks = session.manifest.model.num_blocks

    def answer(text: str):
        batch = session.encoder.encode([text])
        logits = model.run(batch)[0]
        return int(softmax(logits).argmax()), blocks, [batch.input_ids.shape[1]] * blocks, False, 0
    return Configuration(name, answer)


def _measure(configurations: list[Configuration], texts: list[str], repeats: int, desc: str,
             turn: int = TURN) -> dict:
    answers, times = measure_interleaved(configurations, texts, repeats, desc, WARMUP, turn)
    return {"answers": answers, "times": times}


def _texts_of_length(session: EdgeSession, tokens: int) -> str:
    text = "the " * (tokens - 2)
    assert session.encoder.encode([text]).input_ids.shape[1] == tokens
    return text


def overhead(monolithic: MonolithicModel, off: EdgeSession, tokens: int, runs: int) -> dict:
    """Adaptivity off vs one monolithic session, same text, interleaved."""
    text = _texts_of_length(off, tokens)
    mono = _monolithic("mono", monolithic, off)
    seg = _edgeinfer("off", off)
    measured = _measure([mono, seg], [text] * runs, 1, f"overhead at {tokens} tokens")
    m, s = np.array(measured["times"]["mono"]), np.array(measured["times"]["off"])
    return {"tokens": tokens, "runs": runs, "monolithic": latency_summary(list(m)), "edgeinfer_off": latency_summary(list(s)),
            "mean_ratio": round(float(s.mean() / m.mean()), 4), "median_ratio": round(float(np.median(s) / np.median(m)), 4)}


def run_bench(package: Path, data: Path, model_dir: str | None, report_dir: Path, repeats: int = 3,
              keep_schedule: tuple[tuple[int, float], ...] = ((2, 0.7), (4, 0.5)), agreement: float = 0.99,
              overhead_runs: int = 300, importance: str = "token_importance",
              restart_below: float | None = None, reduction: str = "prune", turn: int = TURN) -> dict:
    off = load(package, policy=Policy.off())
    manifest = off.manifest
    examples = read_examples(data, manifest.model.labels)
    texts, raw_labels = list(examples.texts), examples.labels
    model_dir = model_dir or manifest.model.source
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_monolithic(model_dir, manifest.model.task, Path(tmp) / "model.onnx")
        int8_path = quantize_int8(fp32_path, Path(tmp) / "model.int8.onnx")
        fp32, int8 = MonolithicModel(fp32_path), MonolithicModel(int8_path)
        sessions = {
            "edgeinfer off": off,
            f"edgeinfer exits@{agreement}": load(package, policy=Policy(agreement=agreement, precision="fp32")),
            f"edgeinfer {reduction} " + ",".join(f"{b}:{k}" for b, k in keep_schedule):
                load(package, policy=Policy(agreement=None, keep_schedule=keep_schedule, importance=importance,
                                            reduction=reduction)),
            f"edgeinfer exits@{agreement} + {reduction}": load(package, policy=Policy(
                agreement=agreement, keep_schedule=keep_schedule, importance=importance, reduction=reduction)),
        }
        for variant in manifest.precision_variants:
            sessions[f"cascade: {variant.name} exits@{agreement}, restart at fp32"] = load(
                package, policy=Policy(agreement=agreement, precision=variant.name))
            sessions[f"cascade: {variant.name} exits@{agreement} + prune, restart at fp32"] = load(
                package, policy=Policy(agreement=agreement, precision=variant.name, keep_schedule=keep_schedule,
                                       importance=importance))
        if restart_below is not None:
            sessions[f"cascade: exits@{agreement} + prune, restart below {restart_below:.3f}"] = load(
                package, policy=Policy(agreement=agreement, keep_schedule=keep_schedule, importance=importance,
                                       restart_below=restart_below))
        configurations = [_monolithic("onnxruntime fp32 (monolithic)", fp32, off),
                          _monolithic("onnxruntime int8 dynamic (monolithic)", int8, off)]
        configurations += [_edgeinfer(name, s) for name, s in sessions.items()]
        measured = _measure(configurations, texts, repeats, "benchmark", turn)
        overheads = [overhead(fp32, off, n, overhead_runs) for n in (16, 128)]
        full_median = float(np.median(measured["times"]["onnxruntime fp32 (monolithic)"]))
        deadline = _deadline(package, texts, full_median / 2, agreement)
    # agreement is with the package's own full model (after joint fine-tuning it differs from the
    # original, which the monolithic rows still show)
    reference = [a[0] for a in measured["answers"]["edgeinfer off"]]
    monolithic = [a[0] for a in measured["answers"]["onnxruntime fp32 (monolithic)"]]
    base_mean = float(np.mean(measured["times"]["onnxruntime fp32 (monolithic)"]))
    rows = []
    for c in configurations:
        answers = measured["answers"][c.name]
        predicted = np.array([a[0] for a in answers])
        row = {"configuration": c.name, **latency_summary(measured["times"][c.name]),
               "latency_vs_monolithic_fp32": round(float(np.mean(measured["times"][c.name]) / base_mean), 4),
               "agreement_with_full": round(float((predicted == np.array(reference)).mean()), 4),
               "mean_depth": round(float(np.mean([a[1] for a in answers])), 3),
               "restart_rate": round(float(np.mean([a[4] > 0 for a in answers])), 4),
               "agreement_with_monolithic_fp32": round(float((predicted == np.array(monolithic)).mean()), 4),
               "mean_tokens_per_block": [round(float(np.mean([a[2][b] for a in answers if len(a[2]) > b])), 2)
                                         for b in range(manifest.model.num_blocks)]}
        if raw_labels is not None:
            row["accuracy"] = round(float((predicted == np.array(raw_labels)).mean()), 4)
        rows.append(row)
    need = memory_need(manifest)
    memory = {"edgeinfer_run_peak_rss_mb": round(peak_rss_of_run(package, texts[:200]), 1),
              "predicted_model_mb": round(need.total_mb, 1), "predicted_weights_mb": round(need.weights_mb, 1),
              "note": "peak RSS is the whole process (Python, numpy, onnxruntime, tokenizers) running 200 inputs"}
    report = {"package": str(package), "data": str(data), "inputs": len(texts), "repeats": repeats, "turn": turn,
              "settle": default_settle(turn), "memory": memory,
              "keep_schedule": [list(k) for k in keep_schedule], "importance": importance, "reduction": reduction,
              "warmup": WARMUP, "batch": 1, "configurations": rows, "overhead": overheads, "deadline": deadline}
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json(report_dir / "runtime_bench.json", report)
    write_atomically(report_dir / "runtime_bench.md", markdown_report(report))
    return report


def choose_restart_threshold(package: Path, texts: list[str], agreement: float,
                             keep_schedule: tuple[tuple[int, float], ...], importance: str = "token_importance",
                             target: float = 0.99) -> float | None:
    """The lowest confidence below which restarting at full depth brings the cheap point's answers
    to `target` agreement with the full model on these (calibration) texts; None if the cheap point
    already reaches it."""
    full = load(package, policy=Policy.off())
    cheap = load(package, policy=Policy(agreement=agreement, keep_schedule=keep_schedule, importance=importance))
    reference = [full.run(t).label for t in texts]
    results = [cheap.run(t) for t in texts]
    confidence = np.array([r.confidence for r in results])
    wrong = np.array([r.label != ref for r, ref in zip(results, reference)])
    if 1 - wrong.mean() >= target:
        return None
    for candidate in np.unique(confidence):
        restarted = confidence < candidate  # those become the full model's answers
        if 1 - (wrong & ~restarted).mean() >= target:
            return float(candidate)
    return float(confidence.max()) + 1e-6


def _deadline(package: Path, texts: list[str], budget_ms: float, agreement: float) -> dict:
    session = load(package, policy=Policy(agreement=agreement, precision="fp32"), budget=Budget(latency_ms=budget_ms))
    for text in texts[:WARMUP]:
        session.run(text)
    totals, cut = [], 0
    for text in texts:
        t0 = time.perf_counter()
        result = session.run(text)
        totals.append((time.perf_counter() - t0) * 1000)
        cut += result.trace.deadline_cut
    totals_arr = np.array(totals)
    return {"budget_ms": round(budget_ms, 4), "inputs": len(texts), **latency_summary(totals),
            "within_budget": round(float((totals_arr <= budget_ms).mean()), 4),
            "overrun_p99_ms": round(float(np.percentile(np.maximum(totals_arr - budget_ms, 0.0), 99)), 4),
            "cut_short": int(cut)}


def markdown_report(report: dict) -> str:
    lines = [f"# Runtime benchmark: {report['package']}", "",
             f"{report['inputs']} inputs from {report['data']}, batch 1, {report['warmup']} warm-up runs, "
             f"{report['repeats']} repeats per configuration, {regime(report.get('turn', 1))}.", "",
             "| configuration | accuracy | agreement | mean ms | p50 | p90 | p99 | vs fp32 | mean depth | restarts |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["configurations"]:
        lines.append(f"| {r['configuration']} | {r.get('accuracy', float('nan')):.4f} | {r['agreement_with_full']:.4f} | "
                     f"{r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['latency_vs_monolithic_fp32']:.3f} | {r['mean_depth']:.2f} | {r['restart_rate']:.1%} |")
    lines += ["", "Adaptivity off vs one monolithic session (same text, interleaved):", ""]
    for o in report["overhead"]:
        lines.append(f"- {o['tokens']} tokens, {o['runs']} runs: mean ratio {o['mean_ratio']:.3f}, "
                     f"median ratio {o['median_ratio']:.3f}")
    d = report["deadline"]
    lines += ["", f"Deadline {d['budget_ms']:.2f} ms (half the monolithic median): "
                  f"{d['within_budget']:.1%} within the budget (p99 overrun {d['overrun_p99_ms']:.2f} ms), "
                  f"{d['cut_short']} of {d['inputs']} cut short.", ""]
    m = report["memory"]
    lines += [f"Peak RSS of `edgeinfer run` over 200 inputs: {m['edgeinfer_run_peak_rss_mb']:.0f} MB "
              f"(predicted model memory {m['predicted_model_mb']:.0f} MB, of which weights {m['predicted_weights_mb']:.0f} MB).", ""]
    return "\n".join(lines)


def add_turn_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--turn", type=int, default=TURN,
                        help="inputs each configuration answers before the next takes over (default 1: input "
                             "by input, every request starting with caches another configuration filled; N > 1: "
                             "turns opened by a few untimed answers, as a process serving one configuration)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None, help="the Hugging Face directory the package came from")
    parser.add_argument("--report", default="reports")
    parser.add_argument("--repeats", type=int, default=3)
    add_turn_argument(parser)
    args = parser.parse_args(argv)
    report = run_bench(Path(args.package), Path(args.data), args.model, Path(args.report), args.repeats,
                       turn=args.turn)
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
