"""The README's quick start runs as written on what the demo writes (edgeinfer-demo/minilm.edge:
all-MiniLM-L6-v2 exported with the defaults, as `./run.sh demo` does)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_blocks() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.DOTALL)


def test_the_quick_start_has_code():
    kinds = [kind for kind, _ in quick_start_blocks()]
    assert "python" in kinds and "bash" in kinds


@pytest.mark.slow
def test_the_quick_start_runs_as_written_on_the_demos_package(minilm_package, tmp_path):
    (tmp_path / "edgeinfer-demo").mkdir()
    (tmp_path / "edgeinfer-demo" / "minilm.edge").symlink_to(minilm_package)
    for kind, code in quick_start_blocks():
        if kind == "python":
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout.strip(), "the quick start prints its result"
            continue
        for line in (line.split("#")[0].strip() for line in code.splitlines()):
            if not line:
                continue
            assert line.startswith("edgeinfer "), f"a quick-start command this test cannot run: {line}"
            argv = re.findall(r'"[^"]*"|\S+', line)[1:]
            done = subprocess.run([sys.executable, "-m", "edgeinfer.cli", *(a.strip('"') for a in argv)], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{line}: {done.stderr[-2000:]}"
