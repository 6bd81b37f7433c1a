"""`edgeinfer bench`: baselines and operating points in one report, rendered by a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest

from edgeinfer.bench.device_bench import BenchOptions, run_device_bench
from edgeinfer.cli import main
from edgeinfer.errors import InputError

from conftest import write_calibration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_report(tiny_packages, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = write_calibration(root / "data.tsv", n=16, seed=5)
    options = BenchOptions(repeats=1, cold_start_runs=1, budget_ms=50.0, profile=None,
                           model_dir=str(tiny_models[("bert", "text-classification")]))
    report = run_device_bench(tiny_packages[("bert", "text-classification")], data, root / "report", options)
    return report, root / "report"


def test_report_puts_baselines_and_operating_points_side_by_side(bench_report):
    report, folder = bench_report
    names = [r["configuration"] for r in report["configurations"]]
    assert {"PyTorch eager (fp32)", "onnxruntime fp32 (monolithic)", "onnxruntime int8 dynamic (monolithic)",
            "edgeinfer off", "edgeinfer exits@0.99"} <= set(names)
    assert any("deadline" in n for n in names)
    for row in report["configurations"]:
        assert row["runs"] == 16 and row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["agreement_with_full"] <= 1.0
        assert abs(sum(row["exit_share"].values()) - 1.0) < 1e-3
        assert row["cold_start"]["cold_start_ms_median"] > 0 and row["cold_start"]["peak_rss_mb_median"] > 10
    off = next(r for r in report["configurations"] if r["configuration"] == "edgeinfer off")
    assert off["agreement_with_full"] == 1.0
    eager = next(r for r in report["configurations"] if r["configuration"] == "PyTorch eager (fp32)")
    assert eager["agreement_with_full"] == 1.0  # the same model, outside edgeinfer
    table = [line for line in (folder / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(names)  # header + one row per configuration, from the JSON


def test_html_embeds_every_plot_as_a_png(bench_report):
    _, folder = bench_report
    page = (folder / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 6
    for encoded in images:
        png = base64.b64decode(encoded)
        assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_html_renders_in_headless_chromium(bench_report):
    _, folder = bench_report
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:  # a failure, not a skip: a report nobody rendered is not known to render
        pytest.fail("chromium is not installed: `./run.sh test` installs Debian's package when run as root, "
                    "else run `apt-get install chromium`")
    url = (folder / "report.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert 'data-plots-expected="6"' in dom.stdout and 'data-plots-loaded="6"' in dom.stdout
    shot = folder / "report.png"
    done = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,3000", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 20000


def test_merge_puts_devices_side_by_side(bench_report, tmp_path, capsys):
    report, folder = bench_report
    other = tmp_path / "other.json"
    second = json.loads((folder / "report.json").read_text())
    second["device"]["label"] = "second device"
    other.write_text(json.dumps(second))
    assert main(["bench", "--merge", str(folder / "report.json"), str(other), "--report", str(tmp_path / "m")]) == 0
    merged = (tmp_path / "m" / "report.md").read_text()
    assert "second device: mean ms" in merged and f"{report['device']['label']}: mean ms" in merged
    assert (tmp_path / "m" / "report.html").is_file()


def test_bench_bad_input_is_one_line(tiny_packages, tmp_path, capsys):
    package = tiny_packages[("bert", "text-classification")]
    assert main(["bench", str(package), "--data", str(tmp_path / "missing.tsv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="not an edgeinfer bench report"):
        from edgeinfer.bench.merge import merge_reports
        merge_reports([tmp_path / "x.json", tmp_path / "x.json"], tmp_path / "m")


def test_bench_adds_the_planners_point_when_the_package_has_operating_points(tiny_packages, tiny_calibration,
                                                                             tmp_path):
    from edgeinfer.export.calibration_data import read_examples
    from edgeinfer.export.operating_points import calibrate_package

    examples = read_examples(tiny_calibration, None)
    calibrated = tmp_path / "points.edge"
    calibrate_package(tiny_packages[("bert", "text-classification")], list(examples.texts)[:120],
                      list(examples.labels)[:120], target=0.9, output=calibrated)
    data = write_calibration(tmp_path / "data.tsv", n=12, seed=9)
    report = run_device_bench(calibrated, data, tmp_path / "report", BenchOptions(
        agreement=0.9, repeats=1, cold_start_runs=1, profile=None, baselines=False))
    names = [r["configuration"] for r in report["configurations"]]
    assert any(n.startswith("edgeinfer auto:0.9 (") for n in names)
    strict = run_device_bench(calibrated, data, tmp_path / "strict", BenchOptions(
        agreement=0.999, repeats=1, cold_start_runs=1, profile=None, baselines=False))
    assert not any("auto" in r["configuration"] for r in strict["configurations"])
    assert any(note.startswith("no auto point") for note in strict["notes"])


def test_turns_open_with_untimed_answers_and_time_every_input():
    from dataclasses import dataclass, field

    from edgeinfer.bench.interleaved import measure_interleaved

    @dataclass
    class Recorder:
        name: str
        calls: list = field(default_factory=list)

        def answer(self, text: str) -> str:
            self.calls.append(text)
            return text.upper()

    texts = [f"t{i}" for i in range(7)]
    a, b = Recorder("a"), Recorder("b")
    answers, times = measure_interleaved([a, b], texts, repeats=2, desc="test", warmup=1, turn=3, settle=2)
    assert answers["a"] == [t.upper() for t in texts] and len(times["a"]) == 2 * len(texts)
    # warm-up, then per turn: its first two texts untimed, then all of its texts timed
    assert a.calls[:9] == ["t0", "t0", "t1", "t0", "t1", "t2", "t3", "t4", "t3"]
    one_by_one = Recorder("c")  # input by input: no untimed answers between them
    _, cold = measure_interleaved([one_by_one], texts, repeats=1, desc="test", warmup=0, turn=1)
    assert one_by_one.calls == texts and len(cold["c"]) == len(texts)


def test_retrieval_agreement_counts_what_a_search_would_return():
    import numpy as np

    from edgeinfer.bench.retrieval import retrieval_agreement

    rng = np.random.default_rng(3)
    reference = rng.standard_normal((40, 16))
    candidate = reference + 0.4 * rng.standard_normal((40, 16))
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
    same_top1, overlap = 0, 0.0
    for i in range(40):  # by hand: query i against every other text, the corpus embedded by the reference
        others = [j for j in range(40) if j != i]
        ranked = lambda q: sorted(others, key=lambda j: -float(unit(q) @ unit(reference[j])))  # noqa: E731
        want, got = ranked(reference[i]), ranked(candidate[i])
        same_top1 += want[0] == got[0]
        overlap += len(set(want[:10]) & set(got[:10])) / 10
    found = retrieval_agreement(candidate, reference)
    assert found["retrieval_top1_agreement"] == round(same_top1 / 40, 4) < 1.0
    assert found["retrieval_top10_overlap"] == round(overlap / 40, 4)
    assert retrieval_agreement(reference, reference)["retrieval_top1_agreement"] == 1.0


def test_embedding_report_shows_retrieval_a_search_and_marks_a_missed_level(tiny_packages, tmp_path):
    from edgeinfer.bench.html_report import markdown_table

    data = write_calibration(tmp_path / "data.txt", n=16, seed=7, labels=False)
    report = run_device_bench(tiny_packages[("bert", "feature-extraction")], data, tmp_path / "report",
                              BenchOptions(repeats=1, cold_start_runs=1, profile=None, baselines=False))
    off = next(r for r in report["configurations"] if r["configuration"] == "edgeinfer off")
    assert off["retrieval_top1_agreement"] == 1.0 and off["retrieval_corpus"] == 15
    example = report["search_example"]
    assert len(example["full model"]) == 3 and example["query"] not in example["full model"]
    page = (tmp_path / "report" / "report.md").read_text()
    assert "## A search" in page and "same top-1 neighbour" in page
    missed = dict(off, configuration="edgeinfer exits@0.99", level=0.99, meets_level=False)
    assert "edgeinfer exits@0.99 **(misses 0.99)**" in markdown_table({"configurations": [missed]})


def test_decoder_pareto_front_keeps_the_rows_nothing_beats():
    from edgeinfer.bench.studies.decoder_bench import pareto_front

    rows = [{"config": "fp32", "tokens_per_s_median": 40.0},  # exact by construction: agreement 1
            {"config": "speculative", "tokens_per_s_median": 80.0},
            {"config": "q8", "tokens_per_s_median": 100.0, "token_agreement": 0.98},
            {"config": "int8", "tokens_per_s_median": 90.0, "token_agreement": 0.97},
            {"config": "q4", "tokens_per_s_median": 150.0, "token_agreement": 0.70},
            {"config": "pytorch", "tokens_per_s_median": 15.0}]  # no agreement figure: left out
    assert pareto_front(rows, {"fp32", "speculative"}) == ["speculative", "q8", "q4"]


def test_speculation_acceptance_needed_solves_the_round_cost():
    from edgeinfer.bench.studies.speculation_costs import acceptance_needed, tokens_per_round

    assert tokens_per_round(1.0, 4) == 5.0 and tokens_per_round(0.0, 4) == 1.0
    assert tokens_per_round(0.5, 2) == 1.75  # 1 + 0.5 + 0.25
    needed = acceptance_needed(2.0, 27.0, 4, 12.5)
    assert needed is not None and abs((4 * 2.0 + 27.0) / tokens_per_round(needed, 4) - 12.5) < 1e-6
    assert acceptance_needed(10.0, 27.0, 4, 12.5) is None  # (4 x 10 + 27) / 5 = 13.4 ms even if all are kept
    assert acceptance_needed(1.0, 27.0, 4, 12.5) < needed  # a cheaper draft may be wrong more often
