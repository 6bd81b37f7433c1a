"""The repository speaks of the product: no work-tracker numbers, no documents it does not contain.

A reader of a docstring, a doc page or RESULTS.md must be able to follow every reference from the
repository itself (or to a paper or public page it cites).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "a work-tracker number": re.compile(r"\bissues? ?#?\d+|\(#\d+\)", re.IGNORECASE),
    "an acceptance criterion": re.compile(r"\bthe acceptance\b|\bacceptance'?s\b(?! rate)", re.IGNORECASE),
    "a document outside the repository": re.compile(
        r"FACTS\.md|DESIGN\.md|STYLE\.md|algorithms\.md|anchors\.md|models\.md|shared/reference|shared/models/README"),
    "who measured rather than what": re.compile(r"\bwork session|\bthis session's machine|\bsession \d+\b",
                                                re.IGNORECASE),
}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".ini", ".sh", ".txt", ".cfg", ".ts", ".js", ".mjs", ".html", ".json", ""}


def _tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("the repository check needs git and a checkout (git ls-files failed)")
    files = [ROOT / name for name in listed.splitlines()]
    return [f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file() and f != Path(__file__).resolve()]


def test_the_repository_names_no_tracker_numbers_sessions_or_outside_documents():
    found = []
    for file in _tracked_text_files():
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for what, pattern in FORBIDDEN.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{file.relative_to(ROOT)}:{line}: {what}: {match.group(0)!r}")
    assert not found, "\n".join(found)


def test_the_check_catches_what_it_names():
    samples = {"a work-tracker number": "as issue 7 asks", "an acceptance criterion": "the acceptance's figure",
               "a document outside the repository": "(FACTS.md)", "who measured rather than what": "a work session"}
    for what, sample in samples.items():
        assert FORBIDDEN[what].search(sample), what
    assert not FORBIDDEN["an acceptance criterion"].search("draft acceptance rate 0.93")
