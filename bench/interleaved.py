"""Timing several configurations on the same inputs, taking turns, so that drift of the machine's
speed (tens of percent within minutes on the reference machine) hits all of them alike.

By default configurations alternate input by input: every request follows one of another
configuration and starts with the caches it filled, as a request on an edge device starts after
whatever else the device ran in between, and as `edgeinfer probe` prices each graph (visited once
per round, after the other paths). `turn=N` times a process serving one configuration instead:
turns of N inputs, each opened by a few untimed answers, because on a Xeon with 4 MB of L2 per core
a graph took five to eight calls to be warm again (the fused fp32 SST-2 graph at 32 tokens: 5.14 ms
on its first call, 3.59 ms warm). Turns last a fraction of a second, short enough for drift to hit
all configurations alike.

The regime moves the ratios, and not always the same way: SST-2's int8 cascade against the fp32
session measured 0.366x input by input and 0.385x in settled turns of 20 on that Xeon (0.40-0.42x
in turns of 20 without settling), and 0.46x input by input on a CPU with a 36 MB L3
(bench/RESULTS-archive.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..progress import progress_bar

WARMUP = 10
TURN = 1  # inputs a configuration answers before the next takes over: input by input
SETTLE = 5  # untimed answers that open each turn, when turns are longer than one input


class Timed(Protocol):
    name: str
    answer: Callable[[str], Any]


@dataclass(frozen=True)
class Named:
    """The plainest Timed: a name and the call that answers."""

    name: str
    answer: Callable[[str], Any]


def default_settle(turn: int) -> int:
    """Untimed answers opening each turn: SETTLE when turns are longer than one input."""
    return SETTLE if turn > 1 else 0


def regime(turn: int = TURN) -> str:
    """How measure_interleaved times, in words for reports."""
    if turn == 1:
        return "configurations interleaved input by input"
    return f"configurations taking turns of {turn} inputs, each turn opened by {default_settle(turn)} untimed ones"


def measure_interleaved(configurations: list[Timed], texts: list[str], repeats: int, desc: str,
                        warmup: int = WARMUP, turn: int = TURN,
                        settle: int | None = None) -> tuple[dict[str, list], dict[str, list[float]]]:
    """(answers per configuration, one per text, from the first repeat; latencies in ms, repeat by
    repeat over the texts), after `warmup` untimed answers per configuration. Configurations take
    turns of `turn` texts, every one of them timed; each turn opens with `settle` untimed answers
    (its first texts, answered again when timed), SETTLE when turns are longer than one input and
    none input by input, so that a turn times a configuration that has been serving a moment."""
    if turn < 1:
        raise ValueError(f"turn must be at least 1, got {turn}")
    settle = default_settle(turn) if settle is None else settle
    answers: dict[str, list] = {c.name: [] for c in configurations}
    times: dict[str, list[float]] = {c.name: [] for c in configurations}
    for c in configurations:
        for text in texts[:warmup]:
            c.answer(text)
    with progress_bar(repeats * len(texts), desc) as bar:
        for repeat in range(repeats):
            for start in range(0, len(texts), turn):
                for c in configurations:
                    for text in texts[start:start + min(settle, turn)]:
                        c.answer(text)
                    for text in texts[start:start + turn]:
                        t0 = time.perf_counter()
                        out = c.answer(text)
                        times[c.name].append((time.perf_counter() - t0) * 1000)
                        if repeat == 0:  # answers do not change between repeats
                            answers[c.name].append(out)
                bar.update(len(texts[start:start + turn]))
    return answers, times
