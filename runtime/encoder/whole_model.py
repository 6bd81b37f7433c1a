"""A whole-model package (schema 1.9: one graph, exported through Optimum for a family with no
adapter) answers every input with the whole model.

It has no blocks to exit after, prune or skip, so any agreement level holds by construction (the
answer is the full model's). What it keeps of the adaptive runtime: precision variants, with a
classifier variant's restart threshold (the cascade: the variant first, fp32 when its answer is
unsure), precision "auto", and the memory and latency budgets.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace

import numpy as np

from ...errors import InputError
from ...manifest import ExitThresholds, Manifest
from ...targets.profile import Profile
from ..memory import check_memory_budget
from ..package import Package
from .planner import choose_precision
from ..policy import AUTO_PRECISION, Budget, Policy, classification_confidence, softmax, variant_level
from ..result import Result, Trace
from ..graph_runner import GraphRunner
from ..tokenize import EncodedBatch, TextEncoder, length_batches, package_tokenizer

def why_no_exits(manifest: Manifest) -> str:
    """The one line every refusal of exits, pruning or skipping gives for a whole-model package."""
    why = manifest.export.get("why") if isinstance(manifest.export.get("why"), str) else "exported through Optimum"
    return f"this package is the whole model in one graph ({why}), so it has no blocks to exit after, prune or skip"


def refuse_whole(manifest: Manifest, what: str) -> None:
    """One line for the tools that work on blocks or exits, when given a whole-model package."""
    if manifest.is_whole:
        raise InputError(f"{what}: {why_no_exits(manifest)}; "
                         f"run it as it is, or quantize it (`edgeinfer quantize`)")


class WholeModelSession:
    def __init__(self, package: Package, policy: Policy = Policy(), budget: Budget = Budget(),
                 threads: int | None = None, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 profile: Profile | None = None, optimized_cache: bool = False):
        self.package = package
        self.manifest = package.manifest
        self.profile = profile
        self.budget = budget
        self.operating_point = None
        why = why_no_exits(self.manifest)
        asked = [name for name, value in (("keep_schedule", policy.keep_schedule), ("skip_blocks", policy.skip_blocks),
                                          ("restart_below", policy.restart_below), ("audit", policy.audit)) if value]
        if asked:
            raise InputError(f"{', '.join(asked)}: {why}; run it with Policy() or Policy(precision=...)")
        self.whole = self.manifest.full_depth()
        self.encoder = TextEncoder(package_tokenizer(package), self.manifest.tokenizer)
        self.runner = GraphRunner(package, threads, providers, optimized_cache)
        self.requested_precision = policy.precision
        self.precision_choice = None
        if policy.precision == AUTO_PRECISION:
            self.precision_choice = choose_precision(self.manifest, policy.agreement, lambda name: True)
            policy = replace(policy, precision=self.precision_choice.precision)
        self.policy = policy
        self.precision, self.level = self._cascade(policy)
        graphs = [(self.whole, self.precision)] + ([(self.whole, "fp32")] if self.level is not None else [])
        self.memory = check_memory_budget(self.manifest, budget.memory_mb, graphs)
        if budget.latency_ms is not None:
            self._warn_if_over_budget()

    def _cascade(self, policy: Policy) -> tuple[str, ExitThresholds | None]:
        """(precision to run, the level whose restart thresholds guard it). fp32 is the full model and
        holds any level; a variant needs thresholds calibrated for the level, or runs alone when no
        level is asked for (agreement=None)."""
        if policy.precision == "fp32":
            return "fp32", None
        if policy.agreement is None:
            return self.manifest.precision_variant(policy.precision).name, None
        level = variant_level(self.manifest, policy.precision, policy.agreement, policy.fallback)
        return (policy.precision, level) if level is not None else ("fp32", None)

    def _warn_if_over_budget(self) -> None:
        """Nothing inside one graph can be cut short: a budget the graph does not fit is said now."""
        if self.profile is None:
            return
        predicted = self.profile.predict_ms(self.whole.name, self.precision, 16)
        if predicted is not None and predicted > self.budget.latency_ms:
            warnings.warn(f"latency budget {self.budget.latency_ms:g} ms is below what this model takes (~{predicted:.2f} ms "
                          f"at 16 tokens) and nothing in one graph can be cut short; requests will overrun it "
                          f"(trace.over_budget says which)", UserWarning, stacklevel=4)

    def run(self, texts: str | list[str]) -> Result | list[Result]:
        if isinstance(texts, str):
            return self._run([texts])[0]
        if not isinstance(texts, (list, tuple)):
            raise InputError(f"run() takes a string or a list of strings, not {type(texts).__name__}")
        if not texts:
            raise InputError("run() got an empty list; pass at least one text")
        results: list[Result | None] = [None] * len(texts)
        for index in length_batches(texts, 32):
            for i, result in zip(index, self._run([texts[i] for i in index])):
                results[i] = result
        return results  # type: ignore[return-value]

    def _run(self, texts: list[str]) -> list[Result]:
        started = time.perf_counter()
        batch = self.encoder.encode(texts)
        milliseconds: dict[str, float] = {}
        outputs = self._call(batch, self.precision, milliseconds)
        results = []
        for row, output in enumerate(outputs):
            tokens = int(batch.attention_mask[row].sum())
            precision, restarts = self.precision, 0
            if self._unsure(output, tokens):
                output = self._call(batch.row(row), "fp32", milliseconds)[0]
                precision, restarts = "fp32", 1
            results.append(self._result(output, tokens, bool(batch.truncated[row]), precision, restarts,
                                        milliseconds, started))
        return results

    def _call(self, batch: EncodedBatch, precision: str, milliseconds: dict[str, float]) -> np.ndarray:
        feeds = batch.span_feeds()
        graph = self.runner.graph(self.whole, precision)
        began = time.perf_counter()
        output = graph.run(None, {k: feeds[k] for k in self.whole.inputs})[0]
        key = f"{self.whole.name}/{precision}"
        milliseconds[key] = round(milliseconds.get(key, 0.0) + (time.perf_counter() - began) * 1000, 4)
        return output

    def _unsure(self, output: np.ndarray, tokens: int) -> bool:
        if self.level is None:
            return False
        threshold = self.level.for_tokens(tokens)[-1]
        return threshold is None or classification_confidence(output) < threshold

    def _result(self, output: np.ndarray, tokens: int, truncated: bool, precision: str, restarts: int,
                milliseconds: dict[str, float], started: float) -> Result:
        total_ms = (time.perf_counter() - started) * 1000
        predicted = self.profile.predict_ms(self.whole.name, precision, tokens) if self.profile is not None else None
        trace = Trace(segments=(self.whole.name,) * (1 + restarts), tokens_per_block=(),
                      exit_after_block=self.manifest.model.num_blocks, milliseconds=dict(milliseconds),
                      total_ms=round(total_ms, 4), truncated=truncated,
                      level_used=self.level.agreement if self.level is not None else None,
                      level_requested=self.policy.agreement, restarts=restarts, precision=precision,
                      precision_requested=self.requested_precision, threads=self.runner.intra_op_threads,
                      over_budget=self.budget.latency_ms is not None and total_ms > self.budget.latency_ms,
                      predicted_ms=round(predicted, 4) if predicted is not None else None,
                      profile=self.profile.key if self.profile is not None else None)
        if self.manifest.model.task == "text-classification":
            probabilities = softmax(output)
            labels = self.manifest.model.labels or tuple(str(i) for i in range(len(output)))
            return Result(labels[int(probabilities.argmax())], probabilities, None,
                          classification_confidence(output), trace)
        return Result(None, None, output.astype(np.float32), None, trace)
