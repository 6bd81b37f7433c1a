"""`edgeinfer calibrate`: measure a grid of operating points on calibration texts and keep the
Pareto set (agreement with the full model vs cost) in the manifest, for the runtime to choose from.

The grid: precision (fp32 and each variant) x exits (none, each calibrated level) x token
reduction (none, pruning, merging at the default keep schedule) x skipped blocks (none, and each
block whose skipping alone keeps the target agreement: drop a block, measure, keep the sets that
hold). Agreement is with the fp32 full model on the same texts (same
label for classifiers, cosine to the full embedding >= the package's one definition, runtime/policy.py). Cost is latency relative to the full
model on this device: the device profile's prediction per request when the probe stored one
(96% of SST-2 points within 10% of measured, and free of the machine's drift), measured wall time
otherwise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..manifest import Manifest, OperatingPoint
from ..progress import progress_bar
from ..runtime.package import open_package
from ..runtime.encoder.whole_model import refuse_whole
from ..runtime.policy import Policy, cosine, default_keep_schedule, embedding_agreement_cosine
from ..runtime.load import load
from ..runtime.encoder.session import EdgeSession
from .package_writer import rewrite_manifest
from .thresholds import BOUND_CONFIDENCE, clopper_pearson_upper

MIN_TEXTS = 50


def _answers(session: EdgeSession, texts: list[str], full: EdgeSession | None = None) -> tuple[list, float, list[int]]:
    """Outputs, cost relative to the full model, depths. Without a device profile the full model
    runs before each text, so both wall times see the same moment of the machine (it drifts by
    tens of percent within minutes here)."""
    outputs, depths, cost, full_cost = [], [], 0.0, 0.0
    for text in texts:
        if full is not None and session.profile is None:
            t0 = time.perf_counter()
            full.run(text)
            full_cost += (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        result = session.run(text)
        wall = (time.perf_counter() - t0) * 1000
        outputs.append(result.probabilities if result.probabilities is not None else result.embedding)
        cost += result.trace.predicted_ms if result.trace.predicted_ms is not None else wall
        depths.append(result.trace.exit_after_block)
    if full is not None and session.profile is not None:
        full_cost = sum(full.run(text).trace.predicted_ms for text in texts)
    return outputs, (cost / full_cost if full is not None else cost / len(texts)), depths


def agreement_bound(agreeing: int, n: int, tests: int = 1) -> float:
    """One-sided Clopper-Pearson lower bound of the agreement at 95% shared among `tests` bounds
    (Bonferroni): the runtime picks the cheapest point whose bound holds, and a bound at 95% for
    each of dozens of candidates lets the luckiest through (a skip set holding 217/218 calibration
    texts held 0.963 on the other half of SST-2 dev)."""
    return 1.0 - clopper_pearson_upper(n - agreeing, n, 1.0 - (1.0 - BOUND_CONFIDENCE) / max(tests, 1))


def _agreeing(outputs: list, reference: list, manifest: Manifest) -> int:
    if manifest.model.task == "text-classification":
        return int(sum(o.argmax() == r.argmax() for o, r in zip(outputs, reference)))
    at = embedding_agreement_cosine(manifest)
    return int(sum(cosine(o, r) >= at for o, r in zip(outputs, reference)))


def candidate_policies(manifest: Manifest, skip_sets: list[tuple[int, ...]]) -> dict[str, Policy]:
    keep = default_keep_schedule(manifest.model.num_blocks)
    classification = manifest.model.task == "text-classification"
    precisions = ["fp32", *(v.name for v in manifest.precision_variants if classification)]
    levels: list[float | None] = [None, *(t.agreement for t in manifest.exit_thresholds)]
    reductions = [((), "prune"), *([(keep, "prune"), (keep, "merge")] if keep else [])]
    policies = {}
    for precision in precisions:
        for level in levels:
            for schedule, reduction in reductions:
                for skip in skip_sets:
                    if set(skip) & {b for b, _ in schedule}:
                        continue
                    parts = [precision, "full depth" if level is None else f"exits@{level}"]
                    parts += [f"{reduction} " + ",".join(f"{b}:{k}" for b, k in schedule)] if schedule else []
                    parts += [f"skip {','.join(map(str, skip))}"] if skip else []
                    policies[" ".join(parts)] = Policy(agreement=level, keep_schedule=schedule, reduction=reduction,
                                                       skip_blocks=skip, precision=precision)
    return policies


def pareto(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """Points no other point beats on both cost and agreement (its lower bound), cheapest first."""
    kept: list[OperatingPoint] = []
    for point in sorted(points, key=lambda p: (p.relative_latency, -p.agreement_bound)):
        if not kept or point.agreement_bound > kept[-1].agreement_bound:
            kept.append(point)
    return kept


def calibrate_package(package_path: Path, texts: list[str], labels: list[int] | None = None,
                      target: float = 0.99, output: Path | None = None, force: bool = False) -> Manifest:
    if len(texts) < MIN_TEXTS:
        raise InputError(f"calibration needs at least {MIN_TEXTS} texts to measure agreement; got {len(texts)}")
    package = open_package(package_path)
    manifest = package.manifest
    refuse_whole(manifest, "operating points choose among exits, pruning and skipping")
    classification = manifest.model.task == "text-classification"
    full = load(package_path, policy=Policy.off())
    reference, _, _ = _answers(full, texts)
    n = len(texts)
    skip_sets: list[tuple[int, ...]] = [()]
    blocks = manifest.model.num_blocks
    for block in range(1, blocks + 1):
        outputs, _, _ = _answers(load(package_path, policy=Policy(agreement=None, skip_blocks=(block,))), texts)
        if agreement_bound(_agreeing(outputs, reference, manifest), n, blocks) >= target:
            skip_sets.append((block,))
    policies = candidate_policies(manifest, skip_sets)
    tests = blocks + len(candidate_policies(manifest, [()] + [(b,) for b in range(1, blocks + 1)]))
    points = []
    with progress_bar(len(policies), "calibrating operating points") as bar:
        for name, policy in policies.items():
            outputs, relative, depths = _answers(load(package_path, policy=policy), texts, full)
            accuracy = None
            if labels is not None and classification:
                accuracy = round(float(np.mean([o.argmax() == y for o, y in zip(outputs, labels)])), 6)
            agreeing = _agreeing(outputs, reference, manifest)
            points.append(OperatingPoint(name=name, policy=_policy_json(policy), agreement=round(agreeing / n, 6),
                                         agreement_bound=round(agreement_bound(agreeing, n, tests), 6),
                                         relative_latency=round(relative, 6), mean_depth=round(float(np.mean(depths)), 4),
                                         accuracy=accuracy))
            bar.update()
    chosen = pareto(points)
    mean_tokens = float(np.mean([len(full.encoder.encode([t]).input_ids[0]) for t in texts]))
    record = {"texts": len(texts), "target": target, "mean_tokens": round(mean_tokens, 2), "candidates": len(points),
              "skip_sets_kept": [list(s) for s in skip_sets[1:]],
              "cost": "device profile prediction" if full.profile is not None else "wall time, full model interleaved",
              "full_model_ms": round(_answers(full, texts)[1], 4),
              "agreement_bound": f"one-sided Clopper-Pearson lower bound, 95% shared among the {tests} bounds "
                                 f"this calibration could test (Bonferroni); points are chosen on it"}
    new_manifest = replace(manifest, operating_points=tuple(chosen),
                           calibration={**manifest.calibration, "operating_points": record})
    return rewrite_manifest(package.root, output or package_path, new_manifest, force)


def _policy_json(policy: Policy) -> dict:
    fields = asdict(policy)
    fields["keep_schedule"] = [list(k) for k in policy.keep_schedule]
    fields["skip_blocks"] = list(policy.skip_blocks)
    return {k: v for k, v in fields.items() if k != "restart_below" or v is not None}
