"""A bench report as report.json, report.md and one self-contained report.html (plots embedded as
PNG data, so the file can be mailed or attached to CI without its folder).

The HTML carries a small script that counts the plots the browser decoded and writes the count
on the page's body (`data-plots-loaded`), which a headless browser test reads back.
"""

from __future__ import annotations

import base64
import html
import re
import io
from pathlib import Path

import numpy as np

from .report_files import write_atomically, write_json


def _figure_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def _quality_key(report: dict) -> tuple[str, str]:
    if any("accuracy" in r for r in report["configurations"]):
        return "accuracy", "accuracy"
    if any("retrieval_top1_agreement" in r for r in report["configurations"]):
        return "retrieval_top1_agreement", "queries whose nearest neighbour is the full model's"
    return "mean_cosine_to_full", "mean cosine to the full model's embedding"


def _log_if_wide(ax, values: list[float], axis: str = "x") -> None:
    """A log latency axis where values span more than 10x (PyTorch eager beside int8 does)."""
    finite = [v for v in values if np.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _pareto(report: dict):
    key, label = _quality_key(report)
    rows = report["configurations"]

    def draw(ax):
        points = sorted((r["mean_ms"], r.get(key, np.nan), r["configuration"], r["kind"]) for r in rows)
        shown = [p for p in points if np.isfinite(p[1])]
        for number, (ms, quality, name, kind) in enumerate(shown, start=1):
            ax.scatter(ms, quality, marker="s" if kind == "baseline" else "o", s=40, label=f"{number}. {name}")
            ax.annotate(str(number), (ms, quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], -np.inf
        for ms, quality, _, _ in shown:
            if quality > best:
                front.append((ms, quality))
                best = quality
        if front:
            ax.step(*zip(*front), where="post", color="grey", linewidth=1, label="Pareto front")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        _log_if_wide(ax, [p[0] for p in shown])
        ax.set_xlabel("mean latency (ms)")
        ax.set_ylabel(label)
        missing = len(points) - len(shown)
        ax.set_title("Quality vs latency (squares: baselines)" +
                     (f"; {missing} without a quality figure not shown" if missing else ""))
    return draw


def _latency_distribution(report: dict):
    rows = report["configurations"]

    def draw(ax):
        data = [r["latencies_ms"] for r in rows]
        ax.boxplot(data, orientation="horizontal", showfliers=False)
        ax.set_yticks(range(1, len(rows) + 1), [r["configuration"] for r in rows], fontsize=7)
        _log_if_wide(ax, [v for d in data for v in d])
        ax.set_xlabel("latency per request (ms), whiskers 1.5 IQR")
        ax.set_title("Latency distribution")
    return draw


def _exit_histogram(report: dict):
    rows = [r for r in report["configurations"] if r["kind"] == "edgeinfer"]

    def draw(ax):
        depths = sorted({int(d) for r in rows for d in r["exit_share"]})
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            ax.bar([d + i * width for d in depths], [r["exit_share"].get(str(d), 0.0) for d in depths], width,
                   label=r["configuration"])
        ax.set_xlabel("blocks run before answering")
        ax.set_ylabel("share of inputs")
        ax.set_title("Where inputs leave")
        ax.legend(fontsize=6)
    return draw


def _tokens_per_block(report: dict):
    rows = [r for r in report["configurations"] if r["kind"] == "edgeinfer"]

    def draw(ax):
        for r in rows:
            values = [np.nan if v is None else v for v in r["mean_tokens_per_block"]]
            ax.plot(range(1, len(values) + 1), values, marker="o", label=r["configuration"])
        ax.set_xlabel("block")
        ax.set_ylabel("mean tokens entering the block")
        ax.set_title("Tokens per block (inputs that reached it)")
        ax.legend(fontsize=6)
    return draw


def _predicted_vs_measured(report: dict):
    rows = [r for r in report["configurations"] if "prediction" in r]

    def draw(ax):
        top = 0.0
        for r in rows:
            pairs = np.array(r["prediction"]["pairs"])
            ax.scatter(pairs[:, 0], pairs[:, 1], s=6, alpha=0.5, label=r["configuration"])
            top = max(top, float(np.percentile(pairs, 99)))
        if top > 0:
            ax.plot([0, top], [0, top], color="grey", linewidth=1)
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
        ax.set_xlabel("predicted by the device profile (ms)")
        ax.set_ylabel("measured (ms)")
        ax.set_title("Predicted vs measured latency per request")
        if rows:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no device profile: run `edgeinfer probe` first", ha="center", transform=ax.transAxes)
    return draw


def _peak_memory(report: dict):
    rows = report["configurations"]

    def draw(ax):
        values = [r.get("cold_start", {}).get("peak_rss_mb_median", np.nan) for r in rows]
        ax.barh(range(len(rows)), values)
        ax.set_yticks(range(len(rows)), [r["configuration"] for r in rows], fontsize=7)
        ax.set_xlabel("peak RSS of a fresh process answering 50 inputs (MB)")
        ax.set_title("Peak memory per configuration")
    return draw


PLOTS = (("pareto", "Quality vs latency", _pareto), ("latency", "Latency distribution", _latency_distribution),
         ("exits", "Exit histogram", _exit_histogram), ("tokens", "Tokens per block", _tokens_per_block),
         ("prediction", "Predicted vs measured latency", _predicted_vs_measured),
         ("memory", "Peak memory", _peak_memory))


def _retrieval_keys(report: dict) -> list[str]:
    first = report["configurations"][0] if report["configurations"] else {}
    return [k for k in first if k.startswith("retrieval_top") and k != "retrieval_corpus"]


def _name(row: dict) -> str:
    """A configuration that misses the level it runs at says so where it is named."""
    missed = row.get("meets_level") is False
    return f"{row['configuration']} **(misses {row['level']:g})**" if missed else row["configuration"]


def markdown_table(report: dict) -> str:
    """The configurations side by side: the table the README quotes."""
    quality_key = "accuracy" if any("accuracy" in r for r in report["configurations"]) else "mean_cosine_to_full"
    retrieval = _retrieval_keys(report)
    titles = {"retrieval_top1_agreement": "same top-1 neighbour"}
    extra = "".join(f" {titles.get(k, k.replace('retrieval_', '').replace('_', ' '))} |" for k in retrieval)
    lines = [f"| configuration | {quality_key.replace('_', ' ')} | agreement |{extra} mean ms | p50 | p90 | p99 | vs baseline "
             "| req/s | cold start ms | peak RSS MB | mean depth | restarts | predicted err |",
             "|---|---|---|" + "---|" * len(retrieval) + "---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["configurations"]:
        cold = r.get("cold_start", {})
        prediction = r.get("prediction", {}).get("median_abs_error")
        cells = "".join(f" {r.get(k, float('nan')):.4f} |" for k in retrieval)
        lines.append(
            f"| {_name(r)} | {r.get(quality_key, float('nan')):.4f} | {r['agreement_with_full']:.4f} |{cells} "
            f"{r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['latency_vs_baseline']:.3f} | {r['throughput_per_s']:.0f} | "
            f"{cold.get('cold_start_ms_median', float('nan')):.0f} | {cold.get('peak_rss_mb_median', float('nan')):.0f} | "
            f"{r['mean_depth']:.2f} | {r['restart_rate']:.1%} | "
            f"{'-' if prediction is None else f'{prediction:.1%}'} |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    device = report["device"]
    lines = [f"# Bench: {Path(report['package']).name} on {device['label']}", "",
             f"{report['inputs']} inputs from `{report['data']}`, batch {report['batch']}, {report['threads']} threads, "
             f"{report['warmup']} warm-up requests per configuration, {report['repeats']} interleaved repeats "
             f"(latency percentiles over {report['inputs'] * report['repeats']} requests each). Cold start and peak RSS: "
             f"median of fresh processes (import + load + first result; then 50 inputs). "
             f"Baseline for ratios: {report['baseline']}. Device profile: {report['profile'] or 'none'}. "
             f"Agreement: the full model's label (classifiers) or cosine >= "
             f"{report.get('embedding_agreement_cosine') or 0.99:g} to its embedding; "
             f"predicted err: median absolute error of the profile's per-request prediction.", "",
             markdown_table(report), "", *(f"Note: {note}." for note in report.get("notes", [])), "",
             *_search_lines(report)]
    return "\n".join(lines)


def _search_lines(report: dict) -> list[str]:
    example = report.get("search_example")
    if not example:
        return []
    corpus = report["configurations"][0].get("retrieval_corpus", "the other")
    lines = ["## A search", "", f"Query: \"{example['query']}\" among the {corpus} other inputs, embedded by the full "
             f"model. Top 3:", ""]
    for name, found in example.items():
        if name != "query":
            lines += [f"- {name}: " + " · ".join(f"\"{text}\"" for text in found)]
    return lines + [""]


def _inline(text: str) -> str:
    """Escaped text with our Markdown's one inline mark, **bold**."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _markdown_to_html(markdown: str) -> str:
    """Our own generated Markdown (a title, paragraphs, pipe tables) as HTML."""
    parts, table = [], []

    def flush_table() -> None:
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[2:])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("# "):
            parts.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            parts.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("- "):
            parts.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    flush_table()
    return "\n".join(parts)


def _html_page(title: str, markdown: str, plots: list[tuple[str, str, bytes]]) -> str:
    images = "".join(
        f'<figure><img class="plot" id="plot-{key}" alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for key, caption, png in plots)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child{{text-align:left}}
figure{{display:inline-block;margin:1em}}</style></head>
<body data-plots-expected="{len(plots)}">
{_markdown_to_html(markdown)}
{images}
<script>
window.addEventListener("load", function () {{
  var plots = document.querySelectorAll("img.plot");
  var loaded = Array.prototype.filter.call(plots, function (img) {{ return img.complete && img.naturalWidth > 0; }});
  document.body.setAttribute("data-plots-loaded", String(loaded.length));
}});
</script>
</body></html>
"""


def write_reports(report: dict, report_dir: Path, plots=PLOTS) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    rendered = [(key, title, _figure_png(make(report))) for key, title, make in plots]
    write_json(report_dir / "report.json", report)
    write_atomically(report_dir / "report.md", markdown_report(report))
    title = f"edgeinfer bench: {Path(report['package']).name}"
    write_atomically(report_dir / "report.html", _html_page(title, markdown_report(report), rendered))
