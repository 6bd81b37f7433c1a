"""The online audit: a share of requests also runs at full depth, after its answer is returned,
and an anytime-valid test says when the stated agreement level is not being held.

Calibration promises a level on data like the calibration set; deployed traffic drifts. The
audit samples requests, compares the answer the caller got with the full model's, and keeps the
evidence against "disagreement <= 1 - level" as a test supermartingale: the mean over a few
alternatives p' > 1 - level of the likelihood ratio of p' to 1 - level. Under any rate at or
below 1 - level its expectation never grows, so by Ville's inequality it crosses 1/delta with
probability at most delta however often it is looked at (Ramdas et al., arXiv 2009.03167): the
check is valid after every request. When it crosses, the session moves to the next stricter stored
level (or full depth) and starts a fresh test for that level. The state persists per package and
device in the user cache.

The full-depth runs happen on one background thread, off the caller's latency path; at most
QUEUE requests wait, and further samples are dropped (counted) rather than queued without bound.
The thread ends when idle, so a session that is let go does not stay alive through it.
"""

from __future__ import annotations

import json
import math
import queue
import random
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .user_cache import cache_root, write_text_atomically

CONFIDENCE = 0.95
QUEUE = 64
IDLE_S = 30.0  # the audit thread ends after this long without work, and starts again on the next sample
ALTERNATIVES = (1.5, 2.0, 3.0, 5.0)  # p' as multiples of the level's disagreement rate


def evidence(samples: int, disagreements: int, level: float, multiples: tuple[float, ...] = ALTERNATIVES) -> float:
    """A test supermartingale after these audits: the mean over alternatives p' = multiple x
    (1 - level) of the likelihood ratio of p' to 1 - level (a function of the counts alone).

    Multiples above 1 test "agreement >= level" (it grows when disagreements are too many); below 1,
    "agreement <= level"."""
    rate = 1.0 - level
    if rate <= 0.0 or not samples:
        return 1.0
    logs = []
    for multiple in multiples:
        alternative = min(multiple * rate, 0.999)
        logs.append(disagreements * math.log(alternative / rate)
                    + (samples - disagreements) * math.log((1.0 - alternative) / (1.0 - rate)))
    top = max(logs)
    return math.exp(top) * sum(math.exp(v - top) for v in logs) / len(logs) if top < 700 else math.inf


GRID = tuple(x / 1000 for x in range(500, 1000))  # agreements the bounds are read on


@dataclass
class AuditState:
    """What the audit knows: the level in force and the evidence gathered at it."""

    requested: float
    in_force: float | None  # the stored level in force; None once exits were switched off
    samples: int = 0
    disagreements: int = 0
    dropped: int = 0  # samples not audited because the queue was full
    requests: int = 0  # every request the audited sessions answered (not only the audited ones)
    outside: int = 0  # ... of which the length lay outside the thresholds' calibration inputs'
    adjustments: list[dict] = field(default_factory=list)

    def level_broken(self, confidence: float = CONFIDENCE) -> bool:
        """True once the evidence that the level in force is not held crosses 1 / (1 - confidence)."""
        if self.in_force is None:
            return False
        return evidence(self.samples, self.disagreements, self.in_force) >= 1.0 / (1.0 - confidence)

    def agreement_bounds(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        """Anytime-valid bounds (lower, upper) of the agreement at the level in force, each one-sided
        at `confidence`, read on a 0.001 grid (None before any sample)."""
        if not self.samples:
            return None
        limit = 1.0 / (1.0 - confidence)
        below = tuple(1.0 / m for m in ALTERNATIVES)
        lower = next((a for a in GRID if evidence(self.samples, self.disagreements, a, below) < limit), GRID[-1])
        upper = next((a for a in reversed(GRID) if evidence(self.samples, self.disagreements, a) < limit), GRID[0])
        return lower, upper

    def move_to(self, level: float | None) -> None:
        self.adjustments.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "from": self.in_force, "to": level,
                                 "samples": self.samples, "disagreements": self.disagreements})
        self.in_force, self.samples, self.disagreements = level, 0, 0


def state_path(package_key: str, device_key: str) -> Path:
    return cache_root() / "audit" / f"{package_key}-{device_key}.json"


def read_state(path: Path, requested: float | None, stored_levels: tuple[float, ...],
               any_level: bool = False) -> AuditState | None:
    """The saved state for this requested level (any, with any_level), or None (absent, another
    level, or damaged: warned)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        state = AuditState(**data)
        valid = (isinstance(state.samples, int) and isinstance(state.disagreements, int)
                 and isinstance(state.requests, int) and isinstance(state.outside, int)
                 and 0 <= state.disagreements <= state.samples and isinstance(state.adjustments, list)
                 and (state.in_force is None or state.in_force in stored_levels))
    except (OSError, ValueError, TypeError):
        valid, state = False, None
    if not valid or state is None:
        warnings.warn(f"the audit state {path} is damaged and was ignored; the audit starts afresh", UserWarning,
                      stacklevel=3)
        return None
    return state if any_level or state.requested == requested else None


def write_state(path: Path, state: AuditState) -> None:
    """Atomically: a reader sees the old state or the new one."""
    try:
        write_text_atomically(path, json.dumps(asdict(state)))
    except OSError as err:  # a read-only cache must not break the caller's requests
        warnings.warn(f"the audit state could not be saved to {path} ({err})", UserWarning, stacklevel=2)


class Auditor:
    """Samples answers, checks them against the full model on a background thread, and tightens the
    session's level through `tighten` when the evidence says the level is not held."""

    def __init__(self, share: float, state: AuditState, path: Path, full_answer: Callable[[str], object],
                 tally: Callable[[object, object], tuple[int, int]], tighten: Callable[[float | None], float | None],
                 seed: int | None = None):
        """tally(answer, full answer) -> (samples, disagreements): one for an encoder's answer, one per
        generated token for a decoder's."""
        self.share, self.state, self.path = share, state, path
        self._full_answer, self._tally, self._tighten = full_answer, tally, tighten
        self._random = random.Random(seed)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None  # started on demand, gone after IDLE_S idle

    def offer(self, text: str, answer: object, outside: bool = False) -> bool:
        """Called after a request's answer is made; True when it will be audited. outside: the
        request's length lay outside the calibration inputs' (counted, saved with the next audit)."""
        with self._lock:
            self.state.requests += 1
            self.state.outside += int(outside)
            if self._random.random() >= self.share:
                return False
            try:
                self._queue.put_nowait((text, answer, self.state.in_force))
            except queue.Full:
                self.state.dropped += 1
                return False
            if self._worker is None:  # so an idle session holds no thread (and the thread no session)
                self._worker = threading.Thread(target=self._work, name="edgeinfer-audit", daemon=True)
                self._worker.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        """Block until every queued audit is done (for benchmarks, tests and shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def _work(self) -> None:
        while True:
            try:
                text, answer, level = self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            try:
                reference = self._full_answer(text)
                with self._lock:
                    if level == self.state.in_force:  # answers given under an older level do not count
                        samples, disagreements = self._tally(answer, reference)
                        self.state.samples += samples
                        self.state.disagreements += disagreements
                        if self.state.level_broken():
                            self.state.move_to(self._tighten(self.state.in_force))
                    write_state(self.path, self.state)
            except Exception as err:  # noqa: BLE001 - an audit failure must never reach the caller
                warnings.warn(f"an audit run failed ({type(err).__name__}: {err}); that sample is skipped",
                              UserWarning, stacklevel=1)
            finally:
                self._queue.task_done()
