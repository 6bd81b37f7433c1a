"""Records the runtime trusts from its user cache (verification stamps, optimized-graph stamps),
sealed with a key only this cache holds.

A stamp lets a later process skip work: hashing a package file again, or optimizing a graph
again. Anyone who can write into the cache could otherwise forge one for a file they swapped (its
identity is public: `stat` tells it). Each stamp carries an HMAC-SHA256 under a random key kept in
the cache with owner-only permissions; a stamp without a valid seal is ignored, so the work is
done again. A key readable or writable by others, or owned by someone else, is not trusted, and no
stamp is then. With `verify_key` nothing in the cache is trusted at all (runtime/package.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from typing import Any

from .user_cache import cache_root

KEY_NAME = "seal.key"
_KEY_BYTES = 32


def _key(create: bool) -> bytes | None:
    path = cache_root() / KEY_NAME
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return _new_key(path) if create else None
    except OSError:
        return None
    try:
        status = os.fstat(descriptor)
        private = stat.S_ISREG(status.st_mode) and not status.st_mode & 0o077 \
            and (not hasattr(os, "getuid") or status.st_uid == os.getuid())
        key = os.read(descriptor, _KEY_BYTES + 1) if private else b""
    finally:
        os.close(descriptor)
    return key if len(key) == _KEY_BYTES else None


def _new_key(path) -> bytes | None:
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # another process made it first
        return _key(create=False)
    except OSError:  # a read-only cache: no stamps
        return None
    try:
        os.write(descriptor, key)
    finally:
        os.close(descriptor)
    return key


def _mac(key: bytes, payload: Any) -> str:
    return hmac.new(key, json.dumps(payload, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def seal(payload: Any) -> str | None:
    """The payload as sealed JSON text, or None when this cache can hold no key."""
    key = _key(create=True)
    return None if key is None else json.dumps({"payload": payload, "seal": _mac(key, payload)})


def unseal(text: str) -> Any:
    """The payload of a sealed record, or None when the seal is missing or wrong."""
    key = _key(create=False)
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if key is None or not isinstance(record, dict) or not isinstance(record.get("seal"), str):
        return None
    return record.get("payload") if hmac.compare_digest(record["seal"], _mac(key, record.get("payload"))) else None
