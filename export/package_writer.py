"""Atomic package writes: build beside the target, then rename into place.

A reader never sees a half-written package: either the old one (or none) or the new one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

from ..errors import ExportError
from ..manifest import MANIFEST_NAME, Manifest, file_entry


def prepare_staging(output: Path, force: bool) -> Path:
    if output.exists() and not force:
        raise ExportError(f"{output} already exists; pass --force to replace it")
    if not output.parent.is_dir():
        raise ExportError(f"the folder {output.parent} does not exist; create it first")
    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    (staging / "graphs").mkdir(parents=True)
    (staging / "tokenizer").mkdir()
    return staging


def list_files(staging: Path) -> list[str]:
    return sorted(
        str(p.relative_to(staging)).replace(os.sep, "/")
        for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    )


def finalize(staging: Path, output: Path, manifest: Manifest) -> Manifest:
    """Hash every file into the manifest, write it, and move the package into place."""
    manifest = replace(manifest, files=tuple(file_entry(staging, f) for f in list_files(staging)))
    (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    if output.exists():
        retired = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output, retired)
        os.replace(staging, output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, output)
    return manifest


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
