"""Remembering which package files passed verification, so a new process need not hash them again.

Hashing MiniLM's 90 MB of fp32 weights took 0.15-0.25 s here, most of a cold start (the aim
is 0.3 s from import to first result). After a file passes its checks (size, sha256, and for
a graph the external-data locations), its identity is recorded: device, inode, size, mtime and
ctime in nanoseconds. A later open skips the checks of a file whose identity is unchanged. ctime
cannot be set from user space (any write, or `touch -d`, moves it to the present), so a file
changed after its check is hashed again. Stamps sit in the user's cache, one per manifest digest,
sealed (sealed.py) so that a stamp written by anyone but this runtime is ignored; without a
writable cache every open hashes everything, as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .sealed import seal, unseal
from .user_cache import cache_root, write_text_atomically

Identity = list[int]


def identity(path: Path) -> Identity:
    stat = path.stat()
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _stamp_path(manifest_bytes: bytes) -> Path:
    return cache_root() / "verified" / f"{hashlib.sha256(manifest_bytes).hexdigest()[:32]}.json"


def read_stamp(manifest_bytes: bytes) -> dict[str, Identity]:
    try:
        stamp = unseal(_stamp_path(manifest_bytes).read_text(encoding="utf-8"))
    except (OSError, UnicodeError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def write_stamp(manifest_bytes: bytes, checked: dict[str, Identity]) -> None:
    text = seal(checked)
    try:
        if text is not None:
            write_text_atomically(_stamp_path(manifest_bytes), text)
    except OSError:  # a read-only or full cache only costs the next open its hashing
        pass
