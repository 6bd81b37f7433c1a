"""Issue 3's token-pruning benchmark on AG News (news descriptions, ~50 tokens: long enough for
pruning to matter, unlike SST-2 sentences).

    python -m edgeinfer.bench.agnews_pruning --model ~/.cache/edgeinfer/minilm-agnews [--report reports/agnews]

The keep schedule is chosen on AG News *train* rows (geometric schedules keep r, r^2, ... of the
tokens after successive blocks, as DynamicViT's rho, rho^2, rho^3): the most aggressive one whose
answers still agree with full depth on >= 99% of them. The benchmark then measures it on dev.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ..export.calibration_data import read_examples
from ..export.pipeline import ExportOptions, export_model
from ..runtime.policy import Policy
from ..runtime.session import load
from .runtime_bench import _markdown, run_bench

RATIOS = (0.9, 0.8, 0.7, 0.6, 0.5)
FIRST_BLOCKS = (1, 2)
SELECTION_ROWS = 400
REQUIRED_AGREEMENT = 0.99


def geometric_schedule(first_block: int, ratio: float, num_blocks: int) -> tuple[tuple[int, float], ...]:
    return tuple((b, round(ratio ** (b - first_block + 1), 4)) for b in range(first_block, num_blocks))


def choose_schedule(package: Path, texts: list[str]) -> tuple[tuple[tuple[int, float], ...], list[dict]]:
    full = load(package, policy=Policy.off())
    num_blocks = full.manifest.model.num_blocks
    reference = [full.run(t).label for t in texts]
    tried = []
    for first in FIRST_BLOCKS:
        for ratio in RATIOS:
            schedule = geometric_schedule(first, ratio, num_blocks)
            session = load(package, policy=Policy(agreement=None, keep_schedule=schedule))
            results = [session.run(t) for t in texts]
            agreement = float(np.mean([r.label == ref for r, ref in zip(results, reference)]))
            work = float(np.mean([sum(r.trace.tokens_per_block) / (r.trace.tokens_per_block[0] * num_blocks)
                                  for r in results]))
            tried.append({"schedule": schedule, "agreement": round(agreement, 4), "token_work": round(work, 4)})
    fitting = [t for t in tried if t["agreement"] >= REQUIRED_AGREEMENT]
    best = min(fitting, key=lambda t: t["token_work"]) if fitting else {"schedule": ()}
    return best["schedule"], tried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.expanduser("~/.cache/edgeinfer/minilm-agnews"))
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/edgeinfer/bench"))
    parser.add_argument("--report", default="reports/agnews")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=1000, help="dev rows to measure (of 3,800)")
    args = parser.parse_args(argv)
    shared, cache = Path(args.shared), Path(args.cache)
    train, dev = shared / "data" / "agnews" / "train.tsv", shared / "data" / "agnews" / "dev.tsv"
    package = cache / "agnews-heads.edge"
    if not package.exists():
        cache.mkdir(parents=True, exist_ok=True)
        export_model(args.model, package, ExportOptions(task="text-classification", calib=str(train)))
    selection = read_examples(train, None).split(SELECTION_ROWS, 0, seed=1)[0]
    schedule, tried = choose_schedule(package, list(selection.texts))
    print("schedules tried on train rows:", *tried, sep="\n  ")
    print("chosen:", schedule)
    subset = cache / "agnews_dev_subset.tsv"
    rows = Path(dev).read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(0).permutation(len(rows) - 1)[: args.inputs] + 1
    subset.write_text("\n".join([rows[0]] + [rows[i] for i in sorted(order)]) + "\n", encoding="utf-8")
    report = run_bench(package, subset, args.model, Path(args.report), args.repeats, keep_schedule=schedule)
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
