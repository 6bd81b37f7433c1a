"""The per-user cache folder (device profiles, verification stamps, audit states): $EDGEINFER_CACHE or
~/.cache/edgeinfer."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("EDGEINFER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeinfer"))


def write_text_atomically(path: Path, text: str) -> None:
    """Write through a temporary file renamed into place: a reader, in this process or another,
    sees the old contents or the new ones. Raises OSError (a read-only or full cache)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
