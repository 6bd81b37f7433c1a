"""`edgeinfer bench --merge`: bench reports of one package from several devices (or backends), side
by side. Each report was measured in its own run; ratios within a report are the fair comparison,
absolute figures across reports compare machines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .html_report import _figure_png, _html_page
from .report_files import write_atomically, write_json

COLUMNS = (("mean_ms", "mean ms", "{:.2f}"), ("p90_ms", "p90 ms", "{:.2f}"), ("latency_vs_baseline", "vs baseline", "{:.3f}"))


def read_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} cannot be read as a bench report ({type(err).__name__}); pass report.json files "
                         f"written by `edgeinfer bench`") from None
    if not isinstance(report, dict) or report.get("format") != "edgeinfer.bench":
        raise InputError(f"{path} is not an edgeinfer bench report.json; pass files written by `edgeinfer bench`")
    return report


def merge_reports(paths: list[Path], report_dir: Path) -> dict:
    if len(paths) < 2:
        raise InputError("--merge needs at least two report.json files")
    reports = [read_report(p) for p in paths]
    labels = [r["device"]["label"] for r in reports]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
    names = [c["configuration"] for c in reports[0]["configurations"]]
    names += [c["configuration"] for r in reports[1:] for c in r["configurations"] if c["configuration"] not in names]
    rows = []
    for name in names:
        row = {"configuration": name}
        for label, report in zip(labels, reports):
            found = next((c for c in report["configurations"] if c["configuration"] == name), None)
            row[label] = None if found is None else {
                "mean_ms": found["mean_ms"], "p90_ms": found["p90_ms"], "latency_vs_baseline": found["latency_vs_baseline"],
                "accuracy": found.get("accuracy"), "agreement_with_full": found["agreement_with_full"],
                "peak_rss_mb": found.get("cold_start", {}).get("peak_rss_mb_median"),
                "cold_start_ms": found.get("cold_start", {}).get("cold_start_ms_median")}
        rows.append(row)
    merged = {"format": "edgeinfer.bench-merge", "sources": [str(p) for p in paths], "devices": labels,
              "packages": [r["package"] for r in reports], "inputs": [r["inputs"] for r in reports], "rows": rows}
    write_json(report_dir / "report.json", merged)
    markdown = merged_markdown(merged)
    write_atomically(report_dir / "report.md", markdown)
    png = _figure_png(_latency_bars(merged))
    write_atomically(report_dir / "report.html", _html_page("edgeinfer bench: devices side by side", markdown,
                                                            [("latency", "Mean latency per device", png)]))
    return merged


def merged_markdown(merged: dict) -> str:
    labels = merged["devices"]
    header = "| configuration | " + " | ".join(f"{label}: {title}" for label in labels
                                                for title in ("accuracy", "mean ms", "p90 ms", "peak RSS MB")) + " |"
    lines = ["# Bench reports side by side", "",
             "Each device's figures come from its own run (" + ", ".join(
                 f"{label}: {n} inputs" for label, n in zip(labels, merged["inputs"])) + ").", "",
             header, "|---|" + "---|" * (4 * len(labels))]
    for row in merged["rows"]:
        cells = []
        for label in labels:
            found = row[label]
            if found is None:
                cells += ["-"] * 4
                continue
            quality = found["accuracy"] if found["accuracy"] is not None else found["agreement_with_full"]
            rss = found["peak_rss_mb"]
            cells += [f"{quality:.4f}", f"{found['mean_ms']:.2f}", f"{found['p90_ms']:.2f}",
                      "-" if rss is None else f"{rss:.0f}"]
        lines.append(f"| {row['configuration']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latency_bars(merged: dict):
    def draw(ax):
        labels, rows = merged["devices"], merged["rows"]
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            values = [np.nan if row[label] is None else row[label]["mean_ms"] for row in rows]
            ax.barh([k + i * width for k in range(len(rows))], values, width, label=label)
        ax.set_yticks([k + 0.4 - width / 2 for k in range(len(rows))], [r["configuration"] for r in rows], fontsize=7)
        ax.set_xlabel("mean latency (ms)")
        ax.legend(fontsize=7)
    return draw
