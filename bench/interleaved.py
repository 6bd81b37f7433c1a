"""Timing several configurations on the same inputs, interleaved input by input, so that drift of the
machine's speed (tens of percent within minutes on the reference machine) hits all of them alike."""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from ..progress import progress_bar

WARMUP = 10


class Timed(Protocol):
    name: str
    answer: Callable[[str], Any]


def measure_interleaved(configurations: list[Timed], texts: list[str], repeats: int, desc: str,
                        warmup: int = WARMUP) -> tuple[dict[str, list], dict[str, list[float]]]:
    """(answers per configuration, one per text, from the first repeat; latencies in ms, repeat by
    repeat over the texts), after `warmup` untimed answers per configuration."""
    answers: dict[str, list] = {c.name: [] for c in configurations}
    times: dict[str, list[float]] = {c.name: [] for c in configurations}
    for c in configurations:
        for text in texts[:warmup]:
            c.answer(text)
    with progress_bar(repeats * len(texts), desc) as bar:
        for repeat in range(repeats):
            for text in texts:
                for c in configurations:
                    t0 = time.perf_counter()
                    out = c.answer(text)
                    times[c.name].append((time.perf_counter() - t0) * 1000)
                    if repeat == 0:  # answers do not change between repeats
                        answers[c.name].append(out)
                bar.update()
    return answers, times
