"""`edgeinfer probe`: measure what every graph of a package costs on the device it runs on.

Graphs are timed the way the runtime calls them, one after another along a path (the segment
chain, the stage spans, the fused full graph), not each in a loop of its own: a block called
right after itself finds its weights in cache and ran 0.75 ms here against 1.04 ms inside the
chain. Rounds visit every token count and path in turn, so that drift of the machine's speed
(tens of percent within minutes on this shared machine) lands on all measurements alike.

The per-request overhead (tokenizing, numpy hand-offs, decisions) is measured through the
runtime itself: a request's wall time minus the time inside its graph calls, fitted as a fixed
cost plus a cost per call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..manifest import Manifest, Segment
from ..progress import progress_bar
from ..runtime.package import open_package
from ..runtime.graph_runner import GraphRunner
from ..runtime.sessions import default_threads
from .catalog import usable_target
from .fingerprint import device_fingerprint
from .profile import Profile, fit_cost, package_id


@dataclass(frozen=True)
class ProbePlan:
    tokens: tuple[int, ...]
    batches: tuple[int, ...]
    warmup_rounds: int
    rounds: int


QUICK = ProbePlan(tokens=(8, 16, 32, 64, 128), batches=(1,), warmup_rounds=3, rounds=15)
FULL = ProbePlan(tokens=(8, 16, 32, 64, 128, 256, 512), batches=(1, 4), warmup_rounds=5, rounds=40)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20
    except OSError:
        return float("nan")


def paths(manifest: Manifest) -> list[list[Segment]]:
    """The call sequences the runtime makes: the segment chain with every exit, the stage spans
    (with the token scores, as pruning runs them, and lean, as other runs do), and the fused full
    graph. A run calls one form of a stage, never both, so a path holding both would time each
    with twice the weights passing through the caches. A whole-model package has one graph."""
    if manifest.is_whole:
        return [[manifest.full_depth()]]
    blocks = manifest.blocks()
    exits = {e.after_block: manifest.segment(e.segment) for e in manifest.exits}
    embed = next(s for s in manifest.segments if s.kind == "embed")
    head = next(s for s in manifest.segments if s.kind == "head")
    chain = [embed]
    for depth, block in enumerate(blocks, start=1):
        chain += [block, *([exits[depth]] if depth in exits else [])]
    found = [chain + [head]]
    full = manifest.span_covering(("embed", *(b.name for b in blocks), "head"))
    # the pruning span is priced by the blocks it runs (its cost follows the keep counts)
    covered = dict.fromkeys(s.covers for s in manifest.fused_spans() if s is not full)
    scoring = [manifest.span_covering(covers) for covers in covered]  # every output: what pruning runs
    lean = [min(manifest.spans_covering(covers), key=lambda s: len(s.outputs)) for covers in covered]
    found += [sorted(path, key=lambda s: s.index) for path in ([scoring, lean] if lean != scoring else [scoring]) if path]
    if full is not None:
        found.append([full])
    return found


def _feeds(segment: Segment, tokens: int, batch: int, manifest: Manifest, rng: np.random.Generator) -> dict:
    """Inputs of the right shapes; token ids the vocabulary surely has (cost does not depend on them)."""
    known_ids = np.array([*manifest.tokenizer.special_ids, manifest.tokenizer.pad_id], dtype=np.int64)
    hidden_size = manifest.model.hidden_size
    ids = rng.choice(known_ids, size=(batch, tokens))
    every = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
             "hidden": rng.standard_normal((batch, tokens, hidden_size), dtype=np.float32),
             "attention_bias": np.zeros((batch, tokens), dtype=np.float32)}
    return {k: every[k] for k in segment.inputs}


def probe(package_path: Path, target: str = "cpu", quick: bool = False, threads: int | None = None) -> Profile:
    plan = QUICK if quick else FULL
    chosen = usable_target(target)
    threads = threads or default_threads()
    package = open_package(package_path)
    manifest = package.manifest
    tokens = tuple(t for t in plan.tokens if t <= manifest.tokenizer.max_length) or (manifest.tokenizer.max_length,)
    runner = GraphRunner(package, threads, chosen.providers, backend=chosen.backend)
    first = paths(manifest)[0][0]  # the embed segment, or a whole-model package's graph
    precisions = tuple(p for p in ("fp32", *(v.name for v in manifest.precision_variants)) if runner.has(first, p))
    # a LiteRT file holds a subset of the graphs (no stage spans): probe the paths it can run
    call_paths = [path for path in paths(manifest) if all(runner.has(s, p) for s in path for p in precisions)]
    sessions, opened = _open_all(runner, call_paths, precisions)
    rng = np.random.default_rng(0)
    samples: dict[tuple[str, str, int, int], list[float]] = defaultdict(list)
    steps = (plan.warmup_rounds + plan.rounds) * len(precisions) * len(plan.batches)
    with progress_bar(steps, f"probing {package_path.name} on {target}") as bar:
        for round_index in range(plan.warmup_rounds + plan.rounds):
            for precision in precisions:
                for batch in plan.batches:
                    for count in rng.permutation(tokens):
                        for path in call_paths:
                            for segment in path:
                                graph = sessions[(segment.name, precision)]
                                feeds = _feeds(segment, int(count), batch, manifest, rng)
                                t0 = time.perf_counter()
                                graph.run(None, feeds)
                                elapsed = (time.perf_counter() - t0) * 1000
                                if round_index >= plan.warmup_rounds:
                                    samples[(segment.name, precision, batch, int(count))].append(elapsed)
                    bar.update()
    costs = tuple(fit_cost(name, precision, batch, list(tokens), [samples[(name, precision, batch, t)] for t in tokens])
                  for (name, precision, batch) in sorted({k[:3] for k in samples}))
    overhead_fixed, overhead_per_call = _overhead(package_path, chosen.name, threads, plan)
    return Profile(
        package_id=package_id(package.root), target=chosen.name,
        fingerprint=device_fingerprint(threads, chosen.providers[0]),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        warmup_rounds=plan.warmup_rounds, rounds=plan.rounds, costs=costs,
        overhead_fixed_ms=overhead_fixed, overhead_per_call_ms=overhead_per_call, sessions=opened,
        notes={"mode": "quick" if quick else "full", "tokens": list(tokens), "batches": list(plan.batches),
               "timing": "each graph timed inside its call path (chain, stages, full), rounds interleaving "
                         "token counts and paths; medians and p90 over the rounds"})


def _open_all(runner: GraphRunner, call_paths: list[list[Segment]], precisions: tuple[str, ...]) -> tuple[dict, dict]:
    """Every graph on the paths at every precision, with its load time and the resident memory it added."""
    sessions, opened = {}, {}
    for segment in {s.name: s for path in call_paths for s in path}.values():
        for precision in precisions:
            before, t0 = _rss_mb(), time.perf_counter()
            sessions[(segment.name, precision)] = runner.graph(segment, precision)
            opened[f"{segment.name}/{precision}"] = {"load_ms": round((time.perf_counter() - t0) * 1000, 3),
                                                     "rss_mb": round(_rss_mb() - before, 3)}
    return sessions, opened


def _overhead(package_path: Path, target: str, threads: int, plan: ProbePlan) -> tuple[float, float]:
    """Wall time of runtime requests beyond their graph calls, as fixed + per call (least squares)."""
    from ..runtime.policy import Policy
    from ..runtime.load import load

    manifest = open_package(package_path, verify=False).manifest
    policies = [Policy.off()] + ([] if manifest.is_whole else [Policy(agreement=None, keep_schedule=((1, 1.0),))])
    texts = [" ".join(["word"] * n) for n in (4, 12, 30, 60)]
    calls, extra = [], []
    for policy in policies:
        session = load(package_path, target=target, policy=policy, threads=threads, profile=None)
        for round_index in range(plan.warmup_rounds + plan.rounds):
            for text in texts[: 1 + manifest.tokenizer.max_length // 32]:
                t0 = time.perf_counter()
                result = session.run(text)
                wall = (time.perf_counter() - t0) * 1000
                if round_index >= plan.warmup_rounds:
                    calls.append(len(result.trace.segments))
                    extra.append(wall - sum(result.trace.milliseconds.values()))
    per_call, fixed = np.polyfit(np.array(calls, float), np.array(extra), 1) if len(set(calls)) > 1 \
        else (0.0, float(np.median(extra)))
    return round(max(float(fixed), 0.0), 5), round(max(float(per_call), 0.0), 5)


def consistency(first: Profile, second: Profile) -> list[dict]:
    """Per segment (batch 1, each precision), the relative difference of two probes' medians."""
    rows = []
    for cost in first.costs:
        other = second.cost(cost.segment, cost.precision, cost.batch)
        if other is None or cost.batch != other.batch:
            continue
        common = [t for t in cost.tokens if t in other.tokens]
        a = np.array([cost.median_ms[cost.tokens.index(t)] for t in common])
        b = np.array([other.median_ms[other.tokens.index(t)] for t in common])
        rows.append({"segment": cost.segment, "precision": cost.precision, "batch": cost.batch,
                     "first_ms": [round(float(x), 4) for x in a], "second_ms": [round(float(x), 4) for x in b],
                     "max_relative_difference": round(float(np.max(np.abs(a - b) / a)), 4),
                     "total_relative_difference": round(float(abs(a.sum() - b.sum()) / a.sum()), 4)})
    return rows


