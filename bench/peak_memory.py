"""Peak resident memory of a whole `edgeinfer run` process.

The child reports its own VmHWM from /proc at exit: the kernel's ru_maxrss would also count the
benchmark's pages the child held between fork and exec (over a GB once torch is loaded).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import sys
from edgeinfer.cli import main
code = main(sys.argv[1:])
peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print('PEAK_KB', peak.split()[1], file=sys.stderr)
sys.exit(code)
"""


def peak_rss_of_run(package: Path, texts: list[str], policy_args: tuple[str, ...] = ()) -> float:
    """Peak RSS in MB of `edgeinfer run PACKAGE --file TEXTS` in a fresh process, imports included."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as handle:
        handle.write("\n".join(texts) + "\n")
        handle.flush()
        done = subprocess.run([sys.executable, "-c", _CHILD, "run", str(package), "--file", handle.name, *policy_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KB")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"edgeinfer run failed: {done.stderr[-300:]}")
    return int(lines[-1].split()[1]) / 1024
