"""Timing several configurations on the same inputs, taking turns, so that drift of the machine's
speed (tens of percent within minutes on the reference machine) hits all of them alike.

How long a turn lasts matters as much as taking turns. Input by input (turn=1), every request
follows a request of another configuration and starts with the caches it filled, which no process
serving one model does. Which configuration that penalises depends on the caches: SST-2's int8
cascade measured 0.46x the fp32 session input by input and 0.42x in turns of 20 on a CPU with a
36 MB L3 (the fp32 weights, 90 MB, flushed the cascade's), but 0.37x and 0.40-0.42x on one with
4 MB of L2 per core and a 480 MB L3 (bench/RESULTS.md). Turns of a few dozen inputs keep each
configuration's weights as warm as serving would, and are still short enough (a fraction of a
second) for drift to hit all alike.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from ..progress import progress_bar

WARMUP = 10
TURN = 20  # inputs a configuration answers before the next takes over


class Timed(Protocol):
    name: str
    answer: Callable[[str], Any]


def measure_interleaved(configurations: list[Timed], texts: list[str], repeats: int, desc: str,
                        warmup: int = WARMUP, turn: int = TURN) -> tuple[dict[str, list], dict[str, list[float]]]:
    """(answers per configuration, one per text, from the first repeat; latencies in ms, repeat by
    repeat over the texts), after `warmup` untimed answers per configuration. Configurations take
    turns of `turn` texts; every answer is timed, the first of a turn too."""
    if turn < 1:
        raise ValueError(f"turn must be at least 1, got {turn}")
    answers: dict[str, list] = {c.name: [] for c in configurations}
    times: dict[str, list[float]] = {c.name: [] for c in configurations}
    for c in configurations:
        for text in texts[:warmup]:
            c.answer(text)
    with progress_bar(repeats * len(texts), desc) as bar:
        for repeat in range(repeats):
            for start in range(0, len(texts), turn):
                for c in configurations:
                    for text in texts[start:start + turn]:
                        t0 = time.perf_counter()
                        out = c.answer(text)
                        times[c.name].append((time.perf_counter() - t0) * 1000)
                        if repeat == 0:  # answers do not change between repeats
                            answers[c.name].append(out)
                bar.update(len(texts[start:start + turn]))
    return answers, times
