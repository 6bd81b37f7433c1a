"""The built-in default job: export all-MiniLM-L6-v2, run it adaptively and at full depth on a
bundled sample, and write a small report side by side (JSON and Markdown)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..progress import progress_bar
from ..runtime.policy import Policy, cosine
from ..runtime.session import EdgeSession, load
from .report_files import write_atomically, write_json
from .timing import latency_summary

DEMO_SENTENCES = Path(__file__).resolve().parent.parent / "data" / "demo_sentences.txt"
WARMUP = 3
REPEATS = 5


def _measure(sessions: list[EdgeSession], texts: list[str], bar) -> list[tuple[list, list[float]]]:
    """Each text on every session in turn, so drift of the machine's speed hits all alike."""
    for session in sessions:
        for text in texts[:WARMUP]:
            session.run(text)
    measured: list[tuple[list, list[float]]] = [([], []) for _ in sessions]
    for _ in range(REPEATS):
        for text in texts:
            for session, (results, latencies) in zip(sessions, measured):
                t0 = time.perf_counter()
                result = session.run(text)
                latencies.append((time.perf_counter() - t0) * 1000)
                results.append(result)
                bar.update()
    return [(results[: len(texts)], latencies) for results, latencies in measured]


def run_demo(out_dir: Path, agreement: float = 0.99, force: bool = False) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    package = out_dir / "minilm.edge"
    if force or not package.exists():
        from ..export.pipeline import ExportOptions, export_model

        export_model("minilm", package, ExportOptions(task="feature-extraction", force=force))
    texts = [t for t in DEMO_SENTENCES.read_text(encoding="utf-8").splitlines() if t.strip()]
    full = load(package, policy=Policy(agreement=None))
    adaptive = load(package, policy=Policy(agreement=agreement))
    with progress_bar(2 * REPEATS * len(texts), "demo runs") as bar:
        (full_results, full_ms), (adaptive_results, adaptive_ms) = _measure([full, adaptive], texts, bar)
    cosines = [cosine(a.embedding, f.embedding) for a, f in zip(adaptive_results, full_results)]
    depths = [r.trace.exit_after_block for r in adaptive_results]
    report = {
        "package": str(package),
        "inputs": len(texts),
        "warmup_runs": WARMUP,
        "repeats": REPEATS,
        "full_depth": latency_summary(full_ms),
        "adaptive": {**latency_summary(adaptive_ms), "agreement_level": agreement,
                     "mean_depth": float(np.mean(depths)), "min_cosine_to_full": float(np.min(cosines))},
        "adaptive_over_full_mean_latency": round(float(np.mean(adaptive_ms) / np.mean(full_ms)), 4),
        "per_input": [{"text": t, "exit_after_block": d, "tokens": r.trace.tokens_per_block[0],
                       "cosine_to_full": round(c, 6)}
                      for t, d, r, c in zip(texts, depths, adaptive_results, cosines)],
    }
    write_json(out_dir / "report.json", report)
    write_atomically(out_dir / "report.md", _markdown(report))
    return report


def _markdown(report: dict) -> str:
    full, adaptive = report["full_depth"], report["adaptive"]
    lines = [
        "# edgeinfer demo: all-MiniLM-L6-v2",
        "",
        f"{report['inputs']} sentences, {report['warmup_runs']} warm-up runs, each sentence run "
        f"{report['repeats']} times per configuration, batch 1, same process, configurations interleaved "
        "input by input.",
        "",
        "| configuration | runs | mean ms | p50 ms | p90 ms | p99 ms | mean depth |",
        "|---|---|---|---|---|---|---|",
        f"| full depth | {full['runs']} | {full['mean_ms']:.2f} | {full['p50_ms']:.2f} | {full['p90_ms']:.2f} | "
        f"{full['p99_ms']:.2f} | 6 |",
        f"| early exit (agreement {adaptive['agreement_level']}) | {adaptive['runs']} | {adaptive['mean_ms']:.2f} | "
        f"{adaptive['p50_ms']:.2f} | {adaptive['p90_ms']:.2f} | {adaptive['p99_ms']:.2f} | "
        f"{adaptive['mean_depth']:.2f} |",
        "",
        f"Adaptive / full mean latency: {report['adaptive_over_full_mean_latency']:.3f}. "
        f"Lowest cosine between an adaptive and a full-depth embedding: {adaptive['min_cosine_to_full']:.4f}.",
        "",
    ]
    return "\n".join(lines)
