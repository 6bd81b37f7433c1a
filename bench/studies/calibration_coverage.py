"""Does a stated agreement level hold on inputs the thresholds never saw?

Over many random halvings of a dataset, thresholds are calibrated on one half and the cascade runs
on the other; a level holds in a split when the realised agreement with the full model on the
second half reaches it. Each package kind is replayed from its stage outputs (every exit, and the
final answer), computed once with the package's own graphs, so the hundreds of calibrations cost
seconds. The procedure in force (export/thresholds.py) runs beside the one it replaced: each exit's
threshold lowered greedily until its share of a Clopper-Pearson error budget is spent, the budget's
split between exits picked among four schedules by the depth it buys.

    python -m edgeinfer.bench.studies.calibration_coverage \
        --package heads=PKG --package int8-cascade=PKG@int8 --data sst2-dev=DEV.tsv --out DIR

Figure (recorded in bench/RESULTS-archive.md): the share of splits holding each level, and the mean depth
the test halves ran at, per procedure, package kind and dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...export.calibration_data import read_examples
from ...export.exit_quality import judge
from ...export.thresholds import (AGREEMENT_LEVELS, CascadeOutcome, calibrate_level, clopper_pearson_upper, simulate,
                                  simulate_level)
from ...manifest import ExitThresholds
from ...quant.output_error import encode_batches
from ...quant.variant_thresholds import agreement_scale, feed_lengths, logit_noise_scale, onnx_graphs, variant_outputs
from ...runtime.package import open_package


@dataclass(frozen=True)
class Stages:
    """Per input: each stage's confidence and whether its answer is the full fp32 model's."""

    confidence: np.ndarray  # [n, stages]
    agrees: np.ndarray
    depths: list[int]  # blocks run by an input that leaves at each stage (the last: the full model's)
    full_cost: float  # blocks run by an input that no stage answers
    lengths: np.ndarray  # each input's token count
    blocks: int  # the model's depth: what the runtime runs when no stage may answer
    variant_final: np.ndarray | None = None  # a classifier variant's final logits, and fp32's: the scale
    fp32_final: np.ndarray | None = None  # its restart threshold is calibrated on (variant_thresholds.py)

    def confidence_for(self, calibration_rows: np.ndarray) -> np.ndarray:
        """The stage confidences as the procedure in force calibrates them: a variant's final stage
        on the agreement scale, its noise measured on the calibration rows alone."""
        if self.variant_final is None or self.fp32_final is None:
            return self.confidence
        noise = logit_noise_scale(self.variant_final[calibration_rows], self.fp32_final[calibration_rows])
        if noise is None:
            return self.confidence
        confidence = self.confidence.copy()
        confidence[:, -1] = agreement_scale(confidence[:, -1], noise)
        return confidence


CACHE_FORMAT = b"stages-2"  # 2: a classifier variant's final logits and fp32's are kept


def cached_stage_outputs(spec: str, texts: list[str], folder: Path) -> Stages:
    """stage_outputs, kept in `folder` under the package's manifest digest and the texts' digest."""
    path, _, precision = spec.partition("@")
    key = hashlib.sha256(CACHE_FORMAT + (Path(path) / "manifest.json").read_bytes() + precision.encode()
                         + "\n".join(texts).encode()).hexdigest()[:24]
    file = folder / f"stages-{key}.npz"
    if file.is_file():
        saved = np.load(file)
        return Stages(saved["confidence"], saved["agrees"], saved["depths"].tolist(), float(saved["full_cost"]),
                      saved["lengths"], int(saved["blocks"]),
                      saved["variant_final"] if "variant_final" in saved else None,
                      saved["fp32_final"] if "fp32_final" in saved else None)
    stages = stage_outputs(spec, texts)
    folder.mkdir(parents=True, exist_ok=True)
    finals = {"variant_final": stages.variant_final, "fp32_final": stages.fp32_final} \
        if stages.variant_final is not None else {}
    np.savez(file, confidence=stages.confidence, agrees=stages.agrees, depths=np.array(stages.depths),
             full_cost=stages.full_cost, lengths=stages.lengths, blocks=stages.blocks, **finals)
    return stages


def stage_outputs(spec: str, texts: list[str]) -> Stages:
    """spec: PATH (the fp32 exits) or PATH@VARIANT (that variant's exits and its final answer, with a
    restart at fp32 behind them)."""
    path, _, precision = spec.partition("@")
    package = open_package(path)
    manifest = package.manifest
    feeds = encode_batches(package, texts)
    per_exit, final = variant_outputs(onnx_graphs(package.root, "fp32"), manifest, feeds)
    blocks = manifest.model.num_blocks
    if not precision:
        confidence, agrees = judge(manifest.model.task, per_exit, final)
        return Stages(confidence, agrees, sorted(per_exit), blocks, feed_lengths(feeds), blocks)
    lowered_exits, lowered_final = variant_outputs(onnx_graphs(package.root, precision), manifest, feeds)
    stages = {**lowered_exits, blocks: lowered_final}
    confidence, agrees = judge(manifest.model.task, stages, final)
    classifier = manifest.model.task == "text-classification"
    return Stages(confidence, agrees, sorted(stages), 2 * blocks, feed_lengths(feeds), blocks,
                  lowered_final if classifier else None, final if classifier else None)


def replaced_procedure(confidence: np.ndarray, agrees: np.ndarray, depths: list[int], full_cost: float,
                       level: float) -> list[float | None]:
    """The per-exit greedy search that the common threshold replaced, kept here to measure against."""
    n, exits = confidence.shape
    budget = -1
    while budget + 1 <= n and clopper_pearson_upper(budget + 1, n) <= 1.0 - level:
        budget += 1
    best: tuple[float, list[float | None]] | None = None
    depth_of = np.array([*depths, full_cost], dtype=float)
    for power in (0.0, 0.5, 1.0, 2.0):
        if budget < 0:
            break
        caps = [int(budget * ((e + 1) / exits) ** power) for e in range(exits)]
        thresholds = _greedy(confidence, agrees, caps)
        depth = float(depth_of[simulate(confidence, agrees, thresholds).exit_index].mean())
        if best is None or depth < best[0]:
            best = (depth, thresholds)
    return best[1] if best else [None] * exits


def _greedy(confidence: np.ndarray, agrees: np.ndarray, caps: list[int]) -> list[float | None]:
    open_ = np.ones(len(confidence), dtype=bool)
    spent, thresholds = 0, []
    for e in range(confidence.shape[1]):
        candidates = np.flatnonzero(open_ & np.isfinite(confidence[:, e]))
        order = candidates[np.argsort(-confidence[candidates, e], kind="stable")]
        values = confidence[order, e]
        wrong = spent + np.cumsum(~agrees[order, e])
        last_of_value = np.r_[values[1:] != values[:-1], True] if len(values) else np.array([], bool)
        failing = np.flatnonzero(last_of_value & (wrong > caps[e]))
        stop = failing[0] if len(failing) else len(values)
        admitted = np.flatnonzero(((wrong <= caps[e]) & last_of_value)[:stop])
        if len(admitted) == 0:
            thresholds.append(None)
            continue
        cut = admitted[-1]
        thresholds.append(float(values[cut]))
        spent = int(wrong[cut])
        open_[order[: cut + 1]] = False
    return thresholds


def coverage(stages: Stages, splits: int, size: int | None = None, seed: int = 0) -> dict:
    """Per procedure and level: the share of splits whose test part held the level, and the test
    parts' realised agreement and mean depth. Each split calibrates on `size` inputs and tests on
    as many others (default: halves)."""
    n = len(stages.confidence)
    size = min(size or n // 2, n // 2)
    rng = np.random.default_rng(seed)
    depth_of = np.array([*stages.depths, stages.full_cost], dtype=float)
    procedures = {  # (confidence, calibration rows, level) -> thresholds
        "in force": lambda conf, rows, level: calibrate_level(conf[rows], stages.agrees[rows], stages.depths,
                                                              stages.full_cost, level, stages.lengths[rows]),
        "one range": lambda conf, rows, level: calibrate_level(conf[rows], stages.agrees[rows], stages.depths,
                                                               stages.full_cost, level),
        "replaced": lambda conf, rows, level: ExitThresholds(level, tuple(replaced_procedure(
            conf[rows], stages.agrees[rows], stages.depths, stages.full_cost, level)), (), 0.0, 0.0),
    }
    rows: dict = {name: {str(level): [] for level in AGREEMENT_LEVELS} for name in procedures}
    for _ in range(splits):
        order = rng.permutation(n)
        calib, test = order[:size], order[size: 2 * size]
        in_force = stages.confidence_for(calib)
        for name, procedure in procedures.items():
            confidence = stages.confidence if name == "replaced" else in_force
            for level in AGREEMENT_LEVELS:
                calibrated = procedure(confidence, calib, level)
                outcome: CascadeOutcome = simulate_level(confidence[test], stages.agrees[test], calibrated,
                                                         stages.lengths[test])
                realised = 1.0 - outcome.disagreements / len(test)
                # with no threshold at all, the runtime skips a precision cascade and runs fp32 alone
                never = all(t is None for r in (calibrated.by_length or [calibrated]) for t in r.thresholds)
                depth = float(stages.blocks if never
                              else depth_of[outcome.exit_index].mean())
                rows[name][str(level)].append((realised, depth))
    return {name: {level: {"held": round(float(np.mean([r >= float(level) - 1e-12 for r, _ in runs])), 4),
                           "realised_mean": round(float(np.mean([r for r, _ in runs])), 5),
                           "realised_p5": round(float(np.percentile([r for r, _ in runs], 5)), 5),
                           "mean_depth": round(float(np.mean([d for _, d in runs])), 3)}
                   for level, runs in per_level.items()}
            for name, per_level in rows.items()}


def markdown(results: dict, splits: int) -> str:
    lines = [f"Calibration on one random part, the cascade on another as large; {splits} splits per row. "
             "held: share of splits whose test part reached the level; depth: mean blocks run on the "
             "test part (a restart counts the variant's blocks and the full model's).", "",
             "| package kind | data (calibration + test) | level | held, in force | held, one range | held, replaced | "
             "depth, in force | depth, one range | depth, replaced | realised p5, in force |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, entry in results.items():
        kind, data = key.split(" on ")[0], key.split(" on ")[1].split(" at ")[0]
        for level in map(str, AGREEMENT_LEVELS):
            now, pooled, before = (entry["coverage"][name][level] for name in ("in force", "one range", "replaced"))
            lines.append(f"| {kind} | {data} ({entry['calibration_size']} + {entry['calibration_size']}) | {level} | "
                         f"{now['held']:.3f} | {pooled['held']:.3f} | {before['held']:.3f} | {now['mean_depth']:.2f} | "
                         f"{pooled['mean_depth']:.2f} | {before['mean_depth']:.2f} | {now['realised_p5']:.4f} |")
    return "\n".join(lines) + "\n"


def _sizes(spec: str, n: int) -> list[int]:
    return [n // 2 if part.strip() == "half" else min(int(part), n // 2) for part in spec.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", action="append", required=True, metavar="KIND=PATH[@VARIANT]",
                        help="a package kind to replay (repeat); @VARIANT replays that precision cascade")
    parser.add_argument("--data", action="append", required=True, metavar="NAME=FILE",
                        help="texts to split (TSV with a text or sentence column, or one per line; repeat)")
    parser.add_argument("--splits", type=int, default=100, help="random splits per package and dataset")
    parser.add_argument("--sizes", default="half",
                        help="calibration sizes, comma-separated: each split calibrates on that many inputs and "
                             "tests on as many others ('half': halves; default)")
    parser.add_argument("--out", default="reports/coverage", help="folder for coverage.json and coverage.md")
    args = parser.parse_args(argv)
    results = {}
    for data in args.data:
        data_name, _, data_path = data.partition("=")
        texts = list(read_examples(data_path, None, use_labels=False).texts)
        for package in args.package:
            kind, _, spec = package.partition("=")
            stages = cached_stage_outputs(spec, texts, Path(args.out) / "stages")
            for size in _sizes(args.sizes, len(texts)):
                key = f"{kind} on {data_name}" + ("" if size == len(texts) // 2 else f" at {size}")
                results[key] = {"inputs": len(texts), "package": spec, "calibration_size": size,
                                "coverage": coverage(stages, args.splits, size)}
                print(f"{key}: " + ", ".join(f"{lv} held {c['held']:.2f} depth {c['mean_depth']:.2f}"
                                             for lv, c in results[key]["coverage"]["in force"].items()), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(results, indent=2))
    (out / "coverage.md").write_text(markdown(results, args.splits))
    print(markdown(results, args.splits))


if __name__ == "__main__":
    main()
