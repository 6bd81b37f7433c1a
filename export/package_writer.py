"""Atomic package writes: build beside the target, then rename into place.

A reader never sees a half-written package: either the old one (or none) or the new one.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path

from ..errors import ExportError
from ..manifest import MANIFEST_NAME, Manifest, Variant, file_entry
from ..runtime.onnx_wire import external_bytes


MAY_REPLACE = ".may-replace"  # in a staging folder: the write was asked to replace what is there
STALE_AFTER_S = 7 * 24 * 3600


def prepare_staging(output: Path, force: bool) -> Path:
    if output.exists() and not force:
        raise ExportError(f"{output} already exists; pass --force to replace it")
    if not output.parent.is_dir():
        raise ExportError(f"the folder {output.parent} does not exist; create it first")
    sweep_stale(output)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    (staging / "graphs").mkdir(parents=True)
    (staging / "tokenizer").mkdir()
    if force:
        (staging / MAY_REPLACE).touch()
    return staging


def sweep_stale(output: Path) -> None:
    """Remove what killed writes to `output` left beside it: staging folders whose process is gone
    (on this machine), and any older than a week."""
    now = time.time()
    for leftover in output.parent.glob(f".{output.name}.*"):
        kind, _, rest = leftover.name[len(output.name) + 2:].partition("-")
        if kind not in ("tmp", "old") or not leftover.is_dir():
            continue
        pid = rest.split("-")[0]
        gone = pid.isdigit() and not _alive(int(pid))
        try:
            old = now - leftover.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if gone or old:
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def list_files(staging: Path) -> list[str]:
    return sorted(
        str(p.relative_to(staging)).replace(os.sep, "/")
        for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    )


def finalize(staging: Path, output: Path, manifest: Manifest) -> Manifest:
    """Hash every file into the manifest, write it, and move the package into place."""
    may_replace = (staging / MAY_REPLACE).exists()
    (staging / MAY_REPLACE).unlink(missing_ok=True)  # before the listing: it is not part of the package
    manifest = replace(manifest, segments=tuple(replace(s, variants=tuple(_with_resident_bytes(staging, v) for v in s.variants))
                                                for s in manifest.segments))
    manifest = replace(manifest, files=tuple(file_entry(staging, f) for f in list_files(staging)))
    (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    if output.exists() and not may_replace:  # another write created it while this one ran
        raise ExportError(f"{output} was created by another export while this one ran; pass --force to replace it")
    if output.exists():
        retired = output.parent / f".{output.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(output, retired)
        os.replace(staging, output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        try:
            os.rename(staging, output)  # fails if a directory appeared there meanwhile and is not empty
        except OSError:
            raise ExportError(f"{output} was created by another export while this one ran; "
                              f"pass --force to replace it") from None
    return manifest


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def _with_resident_bytes(staging: Path, variant: Variant) -> Variant:
    """A session on a graph holds its inline tensors and every external tensor it reads (sessions do
    not share them, so the memory check adds these up over the graphs a policy opens)."""
    graph = (staging / variant.path).read_bytes()
    return replace(variant, resident_bytes=len(graph) + external_bytes(graph))


def rewrite_manifest(source_root: Path, destination: Path, manifest: Manifest, force: bool) -> Manifest:
    """The package at source_root with a new manifest (its files unchanged), written atomically to
    destination: in place when they are the same folder. A signature does not carry over."""
    staging = prepare_staging(destination, force or destination.resolve() == source_root.resolve())
    try:
        shutil.copytree(source_root, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(MANIFEST_NAME, "manifest.sig"))
        return finalize(staging, destination, manifest)
    except BaseException:
        discard(staging)
        raise
