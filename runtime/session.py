"""A loaded edge package that answers texts, leaving at the first exit confident enough for the
policy's agreement level (thresholds calibrated at export)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import InputError, PackageError
from ..manifest import ExitHead, Segment
from .package import Package, open_package
from .policy import Policy, classification_confidence, cosine, should_exit, softmax
from .result import Result, Trace
from .sessions import open_session
from .tokenize import TextEncoder


class EdgeSession:
    def __init__(self, package: Package, policy: Policy = Policy(), threads: int | None = None):
        self.package = package
        self.manifest = package.manifest
        self.policy = policy
        self.threads = threads
        self.encoder = TextEncoder(package.path(self.manifest.tokenizer.path), self.manifest.tokenizer)
        self._graphs: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self._blocks = self.manifest.blocks()
        self._embed = next(s for s in self.manifest.segments if s.kind == "embed")
        self._head = next(s for s in self.manifest.segments if s.kind == "head")
        self.level = self.manifest.thresholds_for(policy.agreement) if policy.agreement is not None else None
        self._exits = self._active_exits()

    def _active_exits(self) -> dict[int, tuple[ExitHead, float | None]]:
        """Exits worth running at this level: those with a threshold, and for embeddings the exit
        before each of them (their confidence compares consecutive exits)."""
        if self.level is None:
            return {}
        active: dict[int, tuple[ExitHead, float | None]] = {}
        for i, exit_head in enumerate(self.manifest.exits):
            threshold = self.level.thresholds[i]
            if threshold is None:
                continue
            active[exit_head.after_block] = (exit_head, threshold)
            if exit_head.confidence == "consecutive_cosine" and i > 0:
                before = self.manifest.exits[i - 1]
                active.setdefault(before.after_block, (before, self.level.thresholds[i - 1]))
        return active

    def _graph(self, segment: Segment) -> ort.InferenceSession:
        graph = self._graphs.get(segment.name)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(segment.name)
                if graph is None:
                    graph = open_session(self.package.path(segment.graph("fp32")), self.threads)
                    self._graphs[segment.name] = graph
        return graph

    def run(self, texts: str | list[str]) -> Result | list[Result]:
        if isinstance(texts, str):
            return self._run_one(texts)
        if not isinstance(texts, (list, tuple)):
            raise InputError(f"run() takes a string or a list of strings, not {type(texts).__name__}")
        if not texts:
            raise InputError("run() got an empty list; pass at least one text")
        return [self._run_one(text) for text in texts]

    def _run_one(self, text: str) -> Result:
        started = time.perf_counter()
        batch = self.encoder.encode([text])
        timings: dict[str, float] = {}
        segments_run: list[str] = []

        def call(segment: Segment, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            graph = self._graph(segment)
            t0 = time.perf_counter()
            out = graph.run(None, {k: feeds[k] for k in segment.inputs})
            timings[segment.name] = round((time.perf_counter() - t0) * 1000, 4)
            segments_run.append(segment.name)
            return out

        hidden = call(self._embed, {"input_ids": batch.input_ids, "token_type_ids": batch.token_type_ids})[0]
        bias = np.zeros(batch.input_ids.shape, dtype=np.float32)
        tokens: list[int] = []
        previous_exit: np.ndarray | None = None
        for depth, block in enumerate(self._blocks, start=1):
            tokens.append(int(hidden.shape[1]))
            hidden = call(block, {"hidden": hidden, "attention_bias": bias})[0]
            if depth in self._exits and depth < len(self._blocks):
                exit_head, threshold = self._exits[depth]
                output = call(self.manifest.segment(exit_head.segment), {"hidden": hidden, "attention_bias": bias})[0][0]
                confidence = self._confidence(exit_head, output, previous_exit)
                previous_exit = output
                if should_exit(confidence, threshold):
                    return self._answer(output, confidence, depth, segments_run, tokens, timings, started, batch)
        output = call(self._head, {"hidden": hidden, "attention_bias": bias})[0][0]
        confidence = classification_confidence(output) if self.manifest.model.task == "text-classification" else None
        return self._answer(output, confidence, len(self._blocks), segments_run, tokens, timings, started, batch)

    @staticmethod
    def _confidence(exit_head: ExitHead, output: np.ndarray, previous: np.ndarray | None) -> float | None:
        if exit_head.confidence == "max_prob":
            return classification_confidence(output)
        return cosine(output, previous) if previous is not None else None

    def _answer(self, output, confidence, depth, segments_run, tokens, timings, started, batch) -> Result:
        trace = Trace(segments=tuple(segments_run), tokens_per_block=tuple(tokens), exit_after_block=depth,
                      milliseconds=timings, total_ms=round((time.perf_counter() - started) * 1000, 4),
                      truncated=batch.truncated[0], thresholds_level=self.level.agreement if self.level else None)
        if self.manifest.model.task == "text-classification":
            probabilities = softmax(output)
            labels = self.manifest.model.labels or tuple(str(i) for i in range(len(output)))
            return Result(labels[int(probabilities.argmax())], probabilities, None, confidence, trace)
        return Result(None, None, output.astype(np.float32), confidence, trace)


def load(package: str | os.PathLike[str], target: str = "cpu", policy: Policy = Policy(),
         threads: int | None = None) -> EdgeSession:
    """Open and verify a package, ready to run. Only the CPU target exists so far."""
    if target != "cpu":
        raise InputError(f"target {target!r} is not available; use 'cpu'")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    return EdgeSession(open_package(Path(package)), policy, threads)
