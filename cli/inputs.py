"""What the commands read from their arguments and standard input, checked into one line each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def stdin_text() -> str:
    """Standard input, or one line saying how else to give texts when there is none (closed)."""
    from ..errors import InputError

    if sys.stdin is None or sys.stdin.closed:
        raise InputError("standard input is closed; pass --text or --file, or pipe the texts in")
    try:
        return sys.stdin.read()
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read standard input ({err}); pass --text or --file") from None


def read_texts(args: argparse.Namespace) -> list[str]:
    from ..errors import InputError

    if args.text:
        return list(args.text)
    if args.file:
        lines = _file_lines(args.file, "one input per line")
    else:
        lines = stdin_text().splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise InputError("no input texts; pass --text, --file, or lines on stdin")
    return texts


def read_corpus(name: str) -> list[str]:
    """A search corpus: one text per line, or for a .tsv file the first column under its header."""
    from ..errors import InputError

    path = Path(name)
    lines = [line for line in _file_lines(name, "one corpus text per line") if line.strip()]
    if path.suffix.lower() == ".tsv":
        lines = [line.split("\t")[0] for line in lines[1:]]
    texts = [line.strip() for line in lines if line.strip()]
    if len(texts) < 2:
        raise InputError(f"{path} holds {len(texts)} texts; a corpus needs at least 2, one per line")
    return texts


def _file_lines(name: str, layout: str) -> list[str]:
    from ..errors import InputError

    path = Path(name)
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass a text file with {layout}")
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def keep_schedule(spec: str | None, flag: str = "--keep") -> tuple[tuple[int, float], ...]:
    from ..errors import InputError

    if not spec:
        return ()
    try:
        return tuple((int(b), float(k)) for b, k in (part.split(":") for part in spec.split(",")))
    except ValueError:
        raise InputError(f"{flag} {spec!r} must look like 2:0.7,4:0.5 (after block : share of tokens kept)") from None
