"""Progress bars for long work (export, calibration, benchmarks), silent when stderr is not a TTY."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...
    def set_description(self, desc: str) -> None: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass


@contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Progress]:
    if not sys.stderr.isatty():
        yield _Silent()
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield _Silent()
        return
    with tqdm(total=total, desc=desc, leave=False, file=sys.stderr) as bar:
        yield bar
