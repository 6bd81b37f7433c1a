"""The per-user cache folder (device profiles, verification stamps, audit states): $EDGEINFER_CACHE or
~/.cache/edgeinfer."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("EDGEINFER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeinfer"))


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (0 when it is missing)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def cache_usage() -> dict[str, int]:
    """Bytes held by each part of the cache (optimized graphs, verification stamps, profiles, ...)."""
    root = cache_root()
    if not root.is_dir():
        return {}
    usage = {}
    for entry in sorted(root.iterdir()):
        usage[entry.name] = folder_bytes(entry) if entry.is_dir() else entry.stat().st_size
    return usage


def clear_cache(parts: list[str] | None = None) -> int:
    """Remove the named parts of the cache (all of it when None); returns the bytes freed. Everything
    in it can be rebuilt: graphs are optimized again and files hashed again on the next load."""
    root = cache_root()
    if not root.is_dir():
        return 0
    freed = 0
    for entry in list(root.iterdir()):
        if parts is not None and entry.name not in parts:
            continue
        freed += folder_bytes(entry) if entry.is_dir() else entry.stat().st_size
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return freed


def write_text_atomically(path: Path, text: str) -> None:
    """write_bytes_atomically of the text as UTF-8."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: Path, *chunks: bytes | memoryview) -> None:
    """Write `chunks` one after another through a temporary file renamed into place: a reader, in
    this process or another, sees the old contents or the new ones, never part of a file. Raises
    OSError (a read-only or full disk); the temporary file never outlives a failure."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
