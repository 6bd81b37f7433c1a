"""Reports are written like packages: to a temporary file beside the target, then renamed."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, document: dict) -> None:
    write_atomically(path, json.dumps(document, indent=2) + "\n")
