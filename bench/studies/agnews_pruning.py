"""The token-pruning benchmark on AG News (news descriptions, ~45 tokens: long enough for
pruning to matter, unlike SST-2 sentences).

    python -m edgeinfer.bench.studies.agnews_pruning --model ~/.cache/edgeinfer/minilm-agnews [--report reports/agnews]
        [--score token_importance|cls_attention]

The package is exported with joint fine-tuning that prunes tokens in most of its steps
(`--train-exits joint --train-pruning SCORE`, export/pruning_training.py), with the schedule
family narrowed to where this benchmark prunes (TRAINED_FAMILY), on AG News train rows less 1,500
held out. On those the keep schedule is chosen: geometric schedules keep
r, r^2, ... of the tokens after successive blocks (DynamicViT's rho, rho^2, rho^3), and the one
doing the least token work whose accuracy stays within 0.5 pt of full depth wins. The benchmark
then times it on 1,000 dev rows, where pruning alone runs as the one graph that prunes inside
(manifest.PRUNED_FULL), and measures its accuracy drop on all 3,800.

Pruning alone against adaptivity off is timed three ways, because the ratio depends on what the
caches hold: in the runtime benchmark's rotation of every configuration (each request starts after
six other graphs' weights went through the caches), as the pair alone taking turns input by input,
and as the pair in settled turns (a process serving one policy). The pruned graph's matrix
products run on few tokens, so they wait on weights more than on arithmetic, and it loses more to
cold caches than the unpruned one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ...export.calibration_data import read_examples
from ...export.pipeline import ExportOptions, export_model
from ...export.pruning_training import PruningFamily
from ...manifest import TOKEN_SCORES
from ...runtime.package import open_package
from ...runtime.policy import Policy
from ...runtime.load import load
from ...runtime.encoder.session import EdgeSession
from ..interleaved import Named, measure_interleaved, regime
from ..report_files import write_json
from .runtime_bench import markdown_report, run_bench
from .sst2_runtime import is_current
from ..timing import latency_summary

RATIOS = (0.9, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
FIRST_BLOCKS = (1, 2)
SELECTION_ROWS = 1500  # paired standard error of an accuracy drop near 1 pt: ~0.4 pt
MAX_ACCURACY_DROP = 0.005
# From block 1, r in [0.45, 0.7], 90% of the steps: at r = 0.6 (41% of the token work) the held-out
# rows lost 0.47 pt, against 1.67 pt after training on the broad default family (bench/RESULTS-archive.md).
TRAINED_FAMILY = PruningFamily(first_blocks=(1,), ratio_range=(0.45, 0.7), share=0.9)
# Pruning ranks by the score the package was trained with (--score), which its pruning graph ranks
# by too; merging was compared on a frozen model (bench/RESULTS-archive.md, 2026-11-29).


def geometric_schedule(first_block: int, ratio: float, num_blocks: int) -> tuple[tuple[int, float], ...]:
    return tuple((b, round(ratio ** (b - first_block + 1), 4)) for b in range(first_block, num_blocks))


def _correct(names: list[str], results: list, labels) -> np.ndarray:
    """Per result, whether its label is the row's (labels as indices into names)."""
    return np.array([names.index(r.label) for r in results]) == np.asarray(labels)


def choose_schedule(package: Path, texts: list[str], labels: list[int], score: str) -> tuple[dict, list[dict]]:
    full = load(package, policy=Policy.off())
    names = list(full.manifest.model.labels or [])
    num_blocks = full.manifest.model.num_blocks
    full_results = [full.run(t) for t in texts]
    reference = [r.label for r in full_results]
    full_accuracy = float(_correct(names, full_results, labels).mean())
    tried = []
    for first in FIRST_BLOCKS:
        for ratio in RATIOS:
            schedule = geometric_schedule(first, ratio, num_blocks)
            session = load(package, policy=Policy(agreement=None, keep_schedule=schedule, importance=score))
            results = [session.run(t) for t in texts]
            accuracy = float(_correct(names, results, labels).mean())
            agreement = float(np.mean([r.label == ref for r, ref in zip(results, reference)]))
            work = float(np.mean([sum(r.trace.tokens_per_block) / (r.trace.tokens_per_block[0] * num_blocks)
                                  for r in results]))
            tried.append({"reduction": "prune", "importance": score, "schedule": schedule,
                          "accuracy_drop": round(full_accuracy - accuracy, 4), "agreement": round(agreement, 4),
                          "token_work": round(work, 4)})
    fitting = [t for t in tried if t["accuracy_drop"] <= MAX_ACCURACY_DROP]
    best = min(fitting, key=lambda t: t["token_work"]) if fitting else \
        {"schedule": (), "reduction": "prune", "importance": score}
    return best, tried


PAIR_TURNS = (1, 20)  # input by input; settled turns of 20, as a process serving one policy


def _off_and_pruned(package: Path, chosen: dict) -> tuple[EdgeSession, EdgeSession]:
    return load(package, policy=Policy.off()), load(package, policy=Policy(
        agreement=None, keep_schedule=chosen["schedule"], importance=chosen["importance"],
        reduction=chosen["reduction"]))


def pruning_alone(package: Path, chosen: dict, texts: list[str], repeats: int) -> list[dict]:
    """Adaptivity off and the chosen pruning, the two alone, in each regime of PAIR_TURNS."""
    off, pruned = _off_and_pruned(package, chosen)
    pair = [Named("off", off.run), Named("prune", pruned.run)]
    rows = []
    for turn in PAIR_TURNS:
        _, times = measure_interleaved(pair, texts, repeats, f"off vs prune, turns of {turn}", turn=turn)
        rows.append({"regime": regime(turn), "turn": turn, "off": latency_summary(times["off"]),
                     "prune": latency_summary(times["prune"]),
                     "speedup": round(float(np.mean(times["off"]) / np.mean(times["prune"])), 4)})
    return rows


def accuracy_on(package: Path, chosen: dict, data: Path) -> dict:
    """Accuracy of adaptivity off and of the chosen pruning on every row of `data`, untimed.

    The timed rows are too few to judge a 1 pt criterion: at ~97% agreement the paired standard
    error of the drop on 1,000 rows is ~0.55 pt, so the drop is also measured on all of dev."""
    examples = read_examples(data, None)
    off, pruned = _off_and_pruned(package, chosen)
    names = list(off.manifest.model.labels or [])
    right_off = _correct(names, [off.run(t) for t in examples.texts], examples.labels)
    right_pruned = _correct(names, [pruned.run(t) for t in examples.texts], examples.labels)
    paired = right_off.astype(float) - right_pruned
    return {"rows": len(paired), "accuracy_off": round(float(right_off.mean()), 4),
            "accuracy_prune": round(float(right_pruned.mean()), 4),
            "accuracy_drop": round(float(paired.mean()), 4),
            "drop_standard_error": round(float(paired.std() / np.sqrt(len(paired))), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.expanduser("~/.cache/edgeinfer/minilm-agnews"))
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/edgeinfer/bench"))
    parser.add_argument("--report", default="reports/agnews")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=1000, help="dev rows to measure (of 3,800)")
    parser.add_argument("--score", choices=TOKEN_SCORES, default="token_importance",
                        help="the token score pruning is trained with and ranks by")
    parser.add_argument("--joint-steps", type=int, default=ExportOptions.joint_steps,
                        help="optimizer steps of the joint fine-tuning")
    args = parser.parse_args(argv)
    shared, cache = Path(args.shared), Path(args.cache)
    train, dev = shared / "data" / "agnews" / "train.tsv", shared / "data" / "agnews" / "dev.tsv"
    cache.mkdir(parents=True, exist_ok=True)
    export_rows, selection_rows = cache / "agnews_train_export.tsv", cache / "agnews_train_selection.tsv"
    rows = train.read_text(encoding="utf-8").splitlines()
    held_out = set((np.random.default_rng(1).permutation(len(rows) - 1)[:SELECTION_ROWS] + 1).tolist())
    export_rows.write_text("\n".join([rows[0]] + [r for i, r in enumerate(rows) if i and i not in held_out]) + "\n",
                           encoding="utf-8")
    selection_rows.write_text("\n".join([rows[0]] + [rows[i] for i in sorted(held_out)]) + "\n", encoding="utf-8")
    family = TRAINED_FAMILY  # named in the package, so a stale one is never reused
    trained = (f"after{'+'.join(map(str, family.first_blocks))}-r{family.ratio_range[0]}-{family.ratio_range[1]}"
               f"-share{family.share}")
    package = cache / f"agnews-joint-pruning-{args.score}-{args.joint_steps}-{trained}-heldout{SELECTION_ROWS}.edge"
    if not is_current(package) or open_package(package, verify=False).manifest.pruning_span(args.score) is None:
        export_model(args.model, package, ExportOptions(
            task="text-classification", calib=str(export_rows), train_exits="joint", exit_head="linear",
            train_pruning=args.score, pruning_family=family, joint_steps=args.joint_steps, force=True))
    selection = read_examples(selection_rows, None)
    best, tried = choose_schedule(package, list(selection.texts), list(selection.labels), args.score)
    print("schedules tried on train rows:", *tried, sep="\n  ")
    print("chosen:", best)
    subset = cache / "agnews_dev_subset.tsv"
    rows = Path(dev).read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(0).permutation(len(rows) - 1)[: args.inputs] + 1
    subset.write_text("\n".join([rows[0]] + [rows[i] for i in sorted(order)]) + "\n", encoding="utf-8")
    report = run_bench(package, subset, args.model, Path(args.report), args.repeats,
                       keep_schedule=best["schedule"], importance=best["importance"], reduction=best["reduction"])
    print(markdown_report(report))
    means = {row["configuration"]: row["mean_ms"] for row in report["configurations"]}
    accuracy = {row["configuration"]: row["accuracy"] for row in report["configurations"]}
    pruning = next(name for name in means if name.startswith(f"edgeinfer {best['reduction']} "))
    print(f"pruning alone against adaptivity off: {means['edgeinfer off'] / means[pruning]:.3f}x faster in the "
          f"rotation of every configuration, accuracy {accuracy[pruning]:.4f} against {accuracy['edgeinfer off']:.4f}")
    alone = pruning_alone(package, best, list(read_examples(subset, None).texts), args.repeats)
    for row in alone:
        print(f"  the pair alone, {row['regime']}: off {row['off']['mean_ms']:.2f} ms, "
              f"prune {row['prune']['mean_ms']:.2f} ms, {row['speedup']:.3f}x faster")
    whole_dev = accuracy_on(package, best, dev)
    print(f"  accuracy on all {whole_dev['rows']} dev rows: off {whole_dev['accuracy_off']:.4f}, "
          f"prune {whole_dev['accuracy_prune']:.4f}, drop {100 * whole_dev['accuracy_drop']:.2f} pt "
          f"(standard error {100 * whole_dev['drop_standard_error']:.2f} pt)")
    write_json(Path(args.report) / "pruning_alone.json",
               {"package": str(package), "chosen": best, "tried_on_held_out_train_rows": tried,
                "rotation_speedup": round(means["edgeinfer off"] / means[pruning], 4),
                "accuracy_timed_rows": {"prune": accuracy[pruning], "off": accuracy["edgeinfer off"]},
                "accuracy_all_dev": whole_dev, "pair": alone})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
