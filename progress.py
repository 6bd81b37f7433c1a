"""Progress on long work (export, calibration, benchmarks): a bar on a terminal; elsewhere (a log
file, CI) one log line when a stage starts, about every 10 s while it runs, and when it ends.

The lines go to the "edgeinfer" logger at INFO: a host application decides whether they show; the
CLI shows them on stderr.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Protocol

LOG = logging.getLogger("edgeinfer")
EVERY_S = 10.0


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...
    def set_description(self, desc: str) -> None: ...


class _LogLines:
    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done = total, desc, 0
        self.started = self.last = time.monotonic()
        LOG.info("%s: started (%d steps)", desc, total)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= EVERY_S:
            self.last = now
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            elapsed = now - self.started
            left = f", about {elapsed * (self.total - self.done) / self.done:.0f} s left" \
                if self.total and 0 < self.done < self.total else ""
            LOG.info("%s: %d/%d%s after %.0f s%s", self.desc, self.done, self.total, share, elapsed, left)

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def finish(self) -> None:
        LOG.info("%s: done, %d steps in %.1f s", self.desc, self.done, time.monotonic() - self.started)


@contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Progress]:
    bar = None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
        except ImportError:
            bar = None
    if bar is not None:
        with bar:
            yield bar
        return
    lines = _LogLines(total, desc)
    yield lines
    lines.finish()
