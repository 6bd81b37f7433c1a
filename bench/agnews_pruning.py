"""Issue 3's token-pruning benchmark on AG News (news descriptions, ~50 tokens: long enough for
pruning to matter, unlike SST-2 sentences).

    python -m edgeinfer.bench.agnews_pruning --model ~/.cache/edgeinfer/minilm-agnews [--report reports/agnews]

The keep schedule and the importance score are chosen on AG News *train* rows (geometric schedules
keep r, r^2, ... of the tokens after successive blocks, as DynamicViT's rho, rho^2, rho^3; scores:
attention received (LTP) or attention from the first token (EViT)): the one doing the least token
work whose accuracy on those rows stays within 0.5 pt of full depth. The benchmark then measures
it on dev rows.
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
from .runtime_bench import markdown_report, run_bench
from .sst2_runtime import is_current

RATIOS = (0.9, 0.8, 0.7, 0.6, 0.5)
FIRST_BLOCKS = (1, 2)
SELECTION_ROWS = 600
MAX_ACCURACY_DROP = 0.005
# (reduction, importance): pruning by either score, or ToMe merging (which ranks pairs, not tokens)
REDUCTIONS = (("prune", "token_importance"), ("prune", "cls_attention"), ("merge", "token_importance"))


def geometric_schedule(first_block: int, ratio: float, num_blocks: int) -> tuple[tuple[int, float], ...]:
    return tuple((b, round(ratio ** (b - first_block + 1), 4)) for b in range(first_block, num_blocks))


def choose_schedule(package: Path, texts: list[str], labels: list[int]) -> tuple[dict, list[dict]]:
    full = load(package, policy=Policy.off())
    names = list(full.manifest.model.labels or [])
    num_blocks = full.manifest.model.num_blocks
    reference = [full.run(t).label for t in texts]
    full_accuracy = float(np.mean([names.index(r) == y for r, y in zip(reference, labels)]))
    tried = []
    for reduction, score in REDUCTIONS:
        for first in FIRST_BLOCKS:
            for ratio in RATIOS:
                schedule = geometric_schedule(first, ratio, num_blocks)
                session = load(package, policy=Policy(agreement=None, keep_schedule=schedule, importance=score,
                                                      reduction=reduction))
                results = [session.run(t) for t in texts]
                accuracy = float(np.mean([names.index(r.label) == y for r, y in zip(results, labels)]))
                agreement = float(np.mean([r.label == ref for r, ref in zip(results, reference)]))
                work = float(np.mean([sum(r.trace.tokens_per_block) / (r.trace.tokens_per_block[0] * num_blocks)
                                      for r in results]))
                tried.append({"reduction": reduction, "importance": score, "schedule": schedule, "accuracy_drop": round(full_accuracy - accuracy, 4),
                              "agreement": round(agreement, 4), "token_work": round(work, 4)})
    fitting = [t for t in tried if t["accuracy_drop"] <= MAX_ACCURACY_DROP]
    best = min(fitting, key=lambda t: t["token_work"]) if fitting else \
        {"schedule": (), "reduction": "prune", "importance": "token_importance"}
    return best, tried


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
    if not is_current(package):
        cache.mkdir(parents=True, exist_ok=True)
        export_model(args.model, package, ExportOptions(task="text-classification", calib=str(train), force=True))
    selection = read_examples(train, None).split(SELECTION_ROWS, 0, seed=1)[0]
    best, tried = choose_schedule(package, list(selection.texts), list(selection.labels))
    print("schedules tried on train rows:", *tried, sep="\n  ")
    print("chosen:", best)
    subset = cache / "agnews_dev_subset.tsv"
    rows = Path(dev).read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(0).permutation(len(rows) - 1)[: args.inputs] + 1
    subset.write_text("\n".join([rows[0]] + [rows[i] for i in sorted(order)]) + "\n", encoding="utf-8")
    report = run_bench(package, subset, args.model, Path(args.report), args.repeats,
                       keep_schedule=best["schedule"], importance=best["importance"], reduction=best["reduction"])
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
