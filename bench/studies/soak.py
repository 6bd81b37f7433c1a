"""Soak: many `run()` calls on one session, resident memory sampled, growth reported.

    python -m edgeinfer.bench.studies.soak [--package PKG] [--calls 100000] [--report reports/soak]

The session runs the MiniLM package with exits at 0.99 and pruning (adaptive features on); inputs
alternate short sentences and long paragraphs (truncated at max_length) in a fixed shuffled order.
The figure is RSS after all calls against RSS after the first 1,000 (the allocator's and
onnxruntime's arenas have grown to their working size by then).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from ...progress import progress_bar
from ...runtime.policy import Policy
from ...runtime.load import load
from ..report_files import write_atomically, write_json

BASELINE_CALL = 1000


def resident_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _inputs(seed: int = 0) -> list[str]:
    sample = (Path(__file__).resolve().parent.parent / "data" / "demo_sentences.txt").read_text().splitlines()
    rng = random.Random(seed)
    long = [" ".join(rng.choices(sample, k=rng.randint(4, 12))) for _ in range(40)]
    texts = [s for s in sample if s.strip()] + long
    rng.shuffle(texts)
    return texts


def soak(package: Path, calls: int, sample_every: int = 1000) -> dict:
    session = load(package, policy=Policy(agreement=0.99, keep_schedule=((2, 0.7), (4, 0.5))))
    texts = _inputs()
    samples = []
    started = time.perf_counter()
    with progress_bar(calls, "soak") as bar:
        for call in range(1, calls + 1):
            session.run(texts[call % len(texts)])
            if call % sample_every == 0:
                samples.append({"calls": call, "rss_mb": round(resident_mb(), 2)})
                bar.update(sample_every)
    baseline = next(s["rss_mb"] for s in samples if s["calls"] >= BASELINE_CALL)
    final = samples[-1]["rss_mb"]
    return {"package": str(package), "calls": calls, "seconds": round(time.perf_counter() - started, 1),
            "rss_after_1000_mb": baseline, "rss_final_mb": final,
            "growth": round(final / baseline - 1, 5), "peak_sampled_mb": max(s["rss_mb"] for s in samples),
            "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default=os.path.expanduser("~/.cache/edgeinfer/bench/minilm.edge"))
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--report", default="reports/soak")
    args = parser.parse_args(argv)
    package = Path(args.package)
    if not package.exists():
        from ...export.pipeline import ExportOptions, export_model

        export_model("minilm", package, ExportOptions(task="feature-extraction"))
    report = soak(package, args.calls)
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "soak.json", report)
    summary = (f"{report['calls']} calls in {report['seconds']} s: RSS {report['rss_after_1000_mb']} MB after 1,000, "
               f"{report['rss_final_mb']} MB at the end ({report['growth']:+.2%}); peak sampled "
               f"{report['peak_sampled_mb']} MB")
    write_atomically(out / "soak.md", f"# Soak\n\n{summary}\n")
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
