"""A loaded encoder package that answers texts adaptively.

The session compiles its policy into a Plan once (plan.py) and hands each request to the executor
(executor.py); it owns what lives as long as it does: the graphs, the tokenizer, the costs measured
at load, the audit, and the Result each answer becomes.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace

import numpy as np

from ...errors import InputError
from ...targets.profile import Profile
from ..cost_model import measure_linear_cost
from ..graph_runner import GraphRunner
from ..memory import check_memory_budget
from ..package import Package
from ..policy import Budget, Policy, softmax
from ..result import Result, Trace
from ..tokenize import TextEncoder, check_texts, length_batches, package_tokenizer
from .audit_session import start_audit
from .executor import BatchRows, Executor, adaptive_batch, full_pass, run_one, unsure
from .plan import Plan, compile_plan, levels
from .plan_record import plan_record
from .steps import Answer, RunState, StepCosts, step_cost


class EdgeSession:
    def __init__(self, package: Package, policy: Policy = Policy(), budget: Budget = Budget(),
                 threads: int | None = None, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 profile: Profile | None = None, optimized_cache: bool = False, backend: str = "onnxruntime"):
        self.package = package
        self.profile = profile
        self.operating_point = None  # set by load(policy="auto")
        self.manifest = package.manifest
        self.budget = budget
        self.encoder = TextEncoder(package_tokenizer(package), self.manifest.tokenizer)
        self.runner = GraphRunner(package, threads, providers, optimized_cache, backend=backend)
        # the executor holds the plan and the costs measured at load: one object per session, not per request
        self.executor = Executor(compile_plan(self.manifest, policy, budget, self.runner.has, backend), self.runner,
                                 self.manifest.model.task, profile)
        self.memory = check_memory_budget(self.manifest, budget.memory_mb, self.plan.graphs_needed(),  # none loaded yet
                                          litert=backend == "litert")
        self.auditor = start_audit(self) if policy.audit is not None else None
        span = self.manifest.calibration.get("thresholds", {}).get("lengths", {})
        self._calibrated_lengths = (span.get("min", 0), span.get("max", 1 << 30)) if isinstance(span, dict) else (0, 1 << 30)
        self.outside_calibration = 0  # requests whose length the thresholds' calibration never saw
        if budget.latency_ms is not None:
            self._open_graphs()
            if profile is None or any(profile.cost(s.name, p) is None for s, p in self.plan.graphs_needed()):
                self.executor = replace(self.executor, costs=self._measure_costs())  # a guard without costs never trips
            self._warn_if_budget_below_first_step()

    @property
    def plan(self) -> Plan:
        return self.executor.plan

    @plan.setter
    def plan(self, plan: Plan) -> None:
        self.executor = replace(self.executor, plan=plan)

    costs = property(lambda self: self.executor.costs)
    # what the plan decided, under the names callers read
    policy = property(lambda self: self.plan.policy)
    precision = property(lambda self: self.plan.precision)
    level = property(lambda self: self.plan.level)
    restart_threshold = property(lambda self: self.plan.restart_threshold)
    requested_precision = property(lambda self: self.plan.requested_precision)
    precision_choice = property(lambda self: self.plan.precision_choice)

    def plan_record(self) -> dict:
        """What this session will do, as data (`edgeinfer plan`, `run --json`), with costs predicted at
        the calibration inputs' median length when a device profile is loaded."""
        lengths = self.manifest.calibration.get("thresholds", {}).get("lengths")
        return plan_record(self.plan, self.profile, lengths.get("p50") if isinstance(lengths, dict) else None)

    def use_level(self, agreement: float | None) -> None:
        """Run at another stored agreement level from the next request on (None: exits off, fp32)."""
        policy = replace(self.policy, agreement=agreement, audit=None, fallback="nearest",
                         precision=self.policy.precision if agreement is not None else "fp32")
        precision, level, restart = levels(self.manifest, policy)
        self.plan = self.plan.with_level(self.manifest, level, restart, precision)

    def full_output(self, text: str) -> np.ndarray:
        """The fp32 full model's output for one text (what the audit compares answers with)."""
        state = RunState(started=time.perf_counter(), precision="fp32")
        return full_pass(self.executor, state, self.encoder.encode([text])).output

    def _open_graphs(self) -> None:
        """A deadline cannot absorb a session being created mid-run: open now what the plan may call."""
        for segment, precision in self.plan.graphs_needed():
            self.runner.graph(segment, precision)

    def _measure_costs(self) -> StepCosts:
        """Without a device profile, the deadline guard plans on one block and one exit timed now."""
        hidden_size = self.manifest.model.hidden_size

        def runner(segment):
            graph = self.runner.graph(segment, self.precision)

            def run(tokens: int) -> None:
                feeds = {"hidden": np.zeros((1, tokens, hidden_size), np.float32),
                         "attention_bias": np.zeros((1, tokens), np.float32)}
                graph.run(None, {k: feeds[k] for k in segment.inputs})
            return run

        exits = self.manifest.exits
        return StepCosts(measure_linear_cost(runner(self.plan.blocks[0])),
                         measure_linear_cost(runner(self.manifest.segment(exits[0].segment))) if exits else None)

    def _warn_if_budget_below_first_step(self) -> None:
        """The guard never cuts before the first block (an answer needs one): a budget below that
        step's predicted cost will be overrun by every request, so say so now."""
        tokens = 16
        first = step_cost(self.plan, self.profile, self.costs, 1, tokens, 1 in self.plan.exits, self.precision)
        if first is not None and first > self.budget.latency_ms:
            warnings.warn(f"latency budget {self.budget.latency_ms:g} ms is below the cheapest answer this policy "
                          f"gives (~{first:.2f} ms predicted for the first block at {tokens} tokens); requests will "
                          f"overrun it (trace.over_budget says which)", UserWarning, stacklevel=4)

    # --- running ---------------------------------------------------------------------------------

    def run(self, texts: str | list[str]) -> Result | list[Result]:
        results = self._run(texts)
        if self.auditor is None:
            return results
        if isinstance(texts, str):
            return self._offer_audit(texts, results)  # type: ignore[arg-type]
        return [self._offer_audit(text, result) for text, result in zip(texts, results)]  # type: ignore[arg-type]

    def _offer_audit(self, text: str, result: Result) -> Result:
        if not self.auditor.offer(text, result, result.trace.outside_calibration):
            return result
        return replace(result, trace=replace(result.trace, audited=True))

    def _run(self, texts: str | list[str]) -> Result | list[Result]:
        if isinstance(texts, str):
            return self._run_one(texts)
        if not isinstance(texts, (list, tuple)):
            raise InputError(f"run() takes a string or a list of strings, not {type(texts).__name__}")
        if not texts:
            raise InputError("run() got an empty list; pass at least one text")
        if self.plan.full is not None and len(texts) > 1:
            return self._run_batch(list(texts))
        if len(texts) > 1 and not self.plan.keep and self.budget.latency_ms is None:
            return self._run_batch_adaptive(list(texts))
        return [self._run_one(text) for text in texts]

    def _run_one(self, text: str) -> Result:
        batch = self.encoder.encode([text])
        state, answer = run_one(self.executor, batch)
        return self._answer(state, batch.truncated[0], answer)

    def _run_batch(self, texts: list[str], batch_size: int = 32) -> list[Result]:
        """With nothing to decide per input, texts of similar length run padded together through
        the fused graph (padding masked by attention_bias); each result reports the batch's time."""
        executor = self.executor
        blocks = len(self.plan.blocks)
        results: list[Result | None] = [None] * len(texts)
        for index in length_batches(texts, batch_size):
            state = RunState(started=time.perf_counter(), precision=self.precision)
            batch = self.encoder.encode([texts[i] for i in index])
            outputs = executor.call(state, self.plan.full, batch.span_feeds())[0]
            for row, i in enumerate(index):
                tokens = int(batch.attention_mask[row].sum())
                row_state = RunState(started=state.started, precision=state.precision, segments=list(state.segments),
                                     milliseconds=dict(state.milliseconds), tokens=[tokens] * blocks)
                results[i] = self._answer(row_state, batch.truncated[row], executor.final(outputs[row], blocks))
        return results  # type: ignore[return-value]

    def _run_batch_adaptive(self, texts: list[str], batch_size: int = 16) -> list[Result]:
        """Exits (and skips and restarts) decide per row: texts of similar length run padded together,
        and rows leave the batch at the exit that answers them. Pruning and merging change each row's
        length and a deadline is per request, so those policies run input by input instead."""
        check_texts(texts)
        executor = self.executor
        results: list[Result | None] = [None] * len(texts)
        for index in length_batches(texts, batch_size):
            state = RunState(started=time.perf_counter(), precision=self.precision)
            batch = self.encoder.encode([texts[i] for i in index])
            rows = BatchRows(len(index))
            answers = adaptive_batch(executor, state, batch, rows)
            lengths = batch.attention_mask.sum(1)
            for r, i in enumerate(index):
                if unsure(self.plan, answers[r], int(lengths[r]), self.precision):  # rare: runs alone, restart and all
                    results[i] = self._run_one(texts[i])
                    continue
                depth = answers[r].depth
                row_state = RunState(started=state.started, precision=self.precision, segments=rows.segments[r],
                                     milliseconds=dict(state.milliseconds),
                                     tokens=[0 if d in self.plan.skip else int(lengths[r]) for d in range(1, depth + 1)],
                                     predicted_ms=state.predicted_ms)
                results[i] = self._answer(row_state, batch.truncated[r], answers[r])
        return results  # type: ignore[return-value]

    def _answer(self, state: RunState, truncated: bool, answer: Answer) -> Result:
        output, confidence = answer.output, answer.confidence
        tokens = next((t for t in state.tokens if t), 0)
        outside = self.level is not None and not self._calibrated_lengths[0] <= tokens <= self._calibrated_lengths[1]
        self.outside_calibration += outside
        total_ms = (time.perf_counter() - state.started) * 1000
        trace = Trace(segments=tuple(state.segments), tokens_per_block=tuple(state.tokens),
                      exit_after_block=answer.depth, restarts=state.restarts,
                      milliseconds=state.milliseconds, total_ms=round(total_ms, 4),
                      truncated=truncated, level_used=self.level.agreement if self.level else None,
                      level_requested=self.policy.agreement, precision_requested=self.requested_precision,
                      threads=self.runner.intra_op_threads,
                      over_budget=self.budget.latency_ms is not None and total_ms > self.budget.latency_ms,
                      deadline_cut=answer.cut_short, precision=state.precision,
                      predicted_ms=round(state.predicted_ms + self.profile.overhead_ms(len(state.segments)), 4)
                      if self.profile is not None and np.isfinite(state.predicted_ms) else None,
                      profile=self.profile.key if self.profile is not None else None, outside_calibration=outside)
        if self.manifest.model.task == "text-classification":
            probabilities = softmax(output)
            labels = self.manifest.model.labels or tuple(str(i) for i in range(len(output)))
            return Result(labels[int(probabilities.argmax())], probabilities, None, confidence, trace)
        return Result(None, None, output.astype(np.float32), confidence, trace)
