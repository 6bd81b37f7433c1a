"""Peak resident memory of a whole `edgeinfer run` process, measured by the kernel (wait4)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_rss_of_run(package: Path, texts: list[str], policy_args: tuple[str, ...] = ()) -> float:
    """Peak RSS in MB of `python -m edgeinfer.cli run PACKAGE --file TEXTS`, imports included."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write("\n".join(texts) + "\n")
    try:
        process = subprocess.Popen([sys.executable, "-m", "edgeinfer.cli", "run", str(package), "--file", handle.name,
                                    *policy_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"edgeinfer run failed: {process.stderr.read().decode()[:200]}")
        return usage.ru_maxrss / 1024  # kilobytes on Linux
    finally:
        os.unlink(handle.name)
