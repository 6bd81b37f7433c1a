"""A per-device cache of graphs as onnxruntime optimized them, so a new process skips the optimizer.

Building a session on MiniLM's fused graph took 85-95 ms here, a third of a cold start, and
~28 ms of it is graph optimization (fusions onnxruntime repeats on every load). onnxruntime can
save the optimized graph and load it later with optimizations off (its "offline" mode); the
optimized graph is specific to the onnxruntime version, provider and CPU, so the cache key holds
them with the digests of the graph and its weights. Only the fused full-depth graph is cached
(a block graph optimizes in a few ms). The cache costs disk (the weights once more, in the layout
onnxruntime chose); `load(..., optimized_cache=False)` or EDGEINFER_OPTIMIZED_CACHE=0 turns it off.
Cached files are trusted only while their identity (inode, size, mtime, ctime) matches the sealed
stamp (sealed.py) written with them, like verified package files (verified.py); a package loaded
with `verify_key` neither reads nor writes this cache (optimizing again costs less than hashing it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import onnxruntime as ort

from ..manifest import Manifest
from .sealed import seal, unseal
from .user_cache import cache_root, folder_bytes
from .verified import identity

GRAPH, WEIGHTS, STAMP = "graph.onnx", "weights.bin", "stamp.json"
DEFAULT_CAP_MB = 1024  # EDGEINFER_OPTIMIZED_CACHE_MB overrides; the least recently used entries go first


def cap_bytes() -> int:
    try:
        return max(0, int(float(os.environ.get("EDGEINFER_OPTIMIZED_CACHE_MB", DEFAULT_CAP_MB)) * 2**20))
    except ValueError:
        return DEFAULT_CAP_MB * 2**20


def enabled(requested: bool) -> bool:
    return requested and os.environ.get("EDGEINFER_OPTIMIZED_CACHE", "1") != "0"


def cache_folder(manifest: Manifest, graph_path: str, providers: tuple[str, ...], device_key: str) -> Path:
    digests = {f.path: f.sha256 for f in manifest.files}
    weights = sorted(digests[p] for p in digests if p.endswith(".bin"))
    key = json.dumps([digests.get(graph_path), weights, ort.__version__, list(providers), device_key])
    return cache_root() / "optimized" / hashlib.sha256(key.encode()).hexdigest()[:32]


def cached_graph(folder: Path) -> Path | None:
    """The optimized graph, if it is there and unchanged since it was written."""
    try:
        stamp = unseal((folder / STAMP).read_text(encoding="utf-8"))
        if isinstance(stamp, dict) and all(stamp.get(name) == identity(folder / name) for name in (GRAPH, WEIGHTS)):
            os.utime(folder)  # recently used: trimmed last
            return folder / GRAPH
    except (OSError, UnicodeError):
        pass
    return None


def save_options(options: ort.SessionOptions, folder: Path) -> Path | None:
    """Make `options` write the optimized graph into a staging folder beside `folder`; returns it, or
    None when the cache cannot be written (read-only, full, or a file where its folder should be):
    the session is then built as without a cache."""
    staging = folder.parent / f".{folder.name}.{os.getpid()}-{threading.get_ident()}"
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    options.optimized_model_filepath = str(staging / GRAPH)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return staging


def publish(staging: Path, folder: Path) -> None:
    """Stamp the saved graph and move it into place; a failure only leaves the cache empty."""
    try:
        if not (staging / WEIGHTS).exists():  # a graph with no large tensors
            (staging / WEIGHTS).write_bytes(b"")
        sealed = seal({name: identity(staging / name) for name in (GRAPH, WEIGHTS)})
        if sealed is None:  # no key in this cache: nothing it holds would be trusted
            raise OSError("no seal key")
        (staging / STAMP).write_text(sealed, encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        # a rename keeps inode, size, mtime and ctime of the files inside, so the stamp still holds
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return
    trim(folder.parent, cap_bytes(), keep=folder)


def trim(cache: Path, cap: int, keep: Path | None = None) -> None:
    """Drop the least recently used entries until the cache holds at most `cap` bytes (the entry
    just written stays, even alone over the cap: the next load would only rebuild it)."""
    try:
        entries = [(e.stat().st_mtime, e) for e in cache.iterdir() if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return
    sizes = {e: folder_bytes(e) for _, e in entries}
    total = sum(sizes.values())
    for _, entry in sorted(entries, key=lambda pair: pair[0]):
        if total <= cap:
            break
        if keep is not None and entry == keep:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]
