"""The per-user cache folder (device profiles, verification stamps): $EDGEINFER_CACHE or ~/.cache/edgeinfer."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("EDGEINFER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeinfer"))
