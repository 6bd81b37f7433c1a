"""Put a bench report's Markdown table into docs/benchmarks.md, between markers, so the docs quote the
report itself rather than hand-copied numbers.

    python -m edgeinfer.bench.readme_table REPORT_DIR/report.json [--readme docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from .html_report import markdown_report
from .report_files import write_atomically

START, END = "<!-- bench-report:start -->", "<!-- bench-report:end -->"


def quote_report(report: dict, readme: str) -> str:
    if START not in readme or END not in readme:
        raise InputError(f"the README has no {START} ... {END} markers to put the table between")
    body = markdown_report(report).split("\n", 2)[2].strip()  # without the title line
    head, rest = readme.split(START, 1)
    return f"{head}{START}\n{body}\n{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    readme = Path(args.readme)
    write_atomically(readme, quote_report(report, readme.read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
