"""Checks of what callers pass to the public API: a wrong type or range is one line naming the
argument and what it takes, instead of a TypeError from deep inside numpy or onnxruntime.

A bool is refused wherever a number is asked for: Python counts True as 1, so `Budget(latency_ms=True)`
would otherwise run with a 1 ms deadline.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import InputError


def real(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number in [low, high] (or (low, high] with low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} takes a number, not {type(value).__name__} {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    inside = (low < number if low_open else low <= number) and number <= high
    if not math.isfinite(number) or not inside:
        bracket = "(" if low_open else "["
        raise InputError(f"{name} {_shown(value)} must be in {bracket}{low:g}, {high:g}]")
    return number


def whole(name: str, value: object, low: int, high: int) -> int:
    """An int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} takes a whole number, not {type(value).__name__} {_shown(value)}")
    if not low <= value <= high:
        raise InputError(f"{name} {_shown(value)} must be between {low} and {high}")
    return value


def max_threads() -> int:
    """More intra-op threads than this only slows a run down (and thousands exhaust the process)."""
    return max(8, 4 * (os.cpu_count() or 1))


def path(name: str, value: object) -> Path:
    """A filesystem path given as str or os.PathLike, without NUL bytes or unencodable characters."""
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name} takes a path (str or pathlib.Path), not {type(value).__name__} {_shown(value)}")
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\x00" in text:
        raise InputError(f"{name} {text!r} contains a NUL byte; pass a real path")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{name} {text!r} contains characters that are not valid Unicode; pass a real path") from None
    return Path(text)


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
