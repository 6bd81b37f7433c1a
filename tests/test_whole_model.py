"""A family with no adapter (MPNet here) exported whole through Optimum: one graph, no exits, and
still quantized, run under budgets, probed and benched.

optimum-onnx pins transformers below 4.58, so the export runs in an environment of its own:
`./run.sh test` builds .venv-optimum (edgeinfer[export,optimum]) beside .venv. Everything after the
export runs here, in the runtime the rest of the suite uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_model, transformers_reference, write_calibration

REPO = Path(__file__).resolve().parent.parent
OPTIMUM_PYTHON = REPO / ".venv-optimum" / "bin" / "python"


def export_in_optimum_env(model: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    if not OPTIMUM_PYTHON.exists():
        pytest.fail(f"{OPTIMUM_PYTHON} is missing: `./run.sh test` sets up the Optimum environment")
    return subprocess.run([str(OPTIMUM_PYTHON), "-m", "edgeinfer.cli", "export", str(model), "-o", str(out), *flags],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mpnet")
    calib = write_calibration(root / "calib.tsv", n=200)
    found = {"calib": calib}
    for task, flags in (("feature-extraction", ()), ("text-classification", ("--quant", "int8"))):
        model = build_tiny_model(root / task, "mpnet", task)
        out = root / f"{task}.edge"
        done = export_in_optimum_env(model, out, "--task", task, "--calib", str(calib), *flags)
        assert done.returncode == 0, done.stderr[-2000:]
        found[task], found[f"{task}-model"] = out, model
    return found


def test_whole_model_package_answers_as_the_model_does(mpnet):
    from edgeinfer import load
    from edgeinfer.manifest_reading import manifest_from_json

    manifest = manifest_from_json((mpnet["feature-extraction"] / "manifest.json").read_text())
    assert manifest.is_whole and manifest.exits == () and manifest.export["exporter"] == "optimum"
    session = load(mpnet["feature-extraction"])
    result = session.run("good movie with a dull plot")
    encoded = session.encoder.encode(["good movie with a dull plot"])
    want = transformers_reference(mpnet["feature-extraction-model"], "feature-extraction", encoded.input_ids,
                                  encoded.attention_mask, manifest.model.normalize_embedding)
    assert np.abs(result.embedding - want).max() < 1e-4
    assert result.trace.segments == ("whole",) and result.trace.exit_after_block == manifest.model.num_blocks
    batch = session.run(["good", "a long and slow story about the river city", "fun"])
    for text, answer in zip(["good", "a long and slow story about the river city", "fun"], batch):
        assert np.abs(answer.embedding - session.run(text).embedding).max() < 1e-5


def test_whole_model_package_is_quantized_run_under_a_memory_budget_and_benched(mpnet, tmp_path):
    from edgeinfer import Budget, Policy, load
    from edgeinfer.bench.device_bench import BenchOptions, run_device_bench
    from edgeinfer.errors import BudgetError
    from edgeinfer.bench.report_files import write_json
    from edgeinfer.quant.quantize import quantize_package
    from edgeinfer.targets.probe import probe

    package = tmp_path / "fe.edge"
    texts = [line.split("\t")[0] for line in mpnet["calib"].read_text().splitlines()[1:]]
    # the export added the default int8 variant already: this one is written again from these texts
    manifest = quantize_package(mpnet["feature-extraction"], texts, "int8", output=package, force=True).manifest
    assert [v.name for v in manifest.precision_variants] == ["int8"]
    assert manifest.precision_variants[0].quality["mean_cosine_to_fp32"] > 0.95
    int8 = load(package, policy=Policy(agreement=None, precision="int8"), budget=Budget(memory_mb=512))
    fp32 = load(package, policy=Policy.off())
    assert int8.run("good movie").trace.precision == "int8"
    assert float(np.dot(int8.run("good movie").embedding, fp32.run("good movie").embedding)) > 0.9
    with pytest.raises(BudgetError, match="memory_mb=1 is below"):
        load(package, budget=Budget(memory_mb=1))
    with pytest.raises(Exception, match="no blocks to exit after, prune or skip"):
        load(package, policy=Policy(keep_schedule=((1, 0.5),)))
    profile = probe(package, quick=True)
    assert {(c.segment, c.precision) for c in profile.costs} == {("whole", "fp32"), ("whole", "int8")}
    write_json(tmp_path / "profile.json", profile.to_json())
    timed = load(package, policy=Policy(agreement=None, precision="int8"), budget=Budget(latency_ms=1000),
                 profile=tmp_path / "profile.json")
    answer = timed.run("good movie")
    assert answer.trace.predicted_ms is not None and not answer.trace.over_budget
    report = run_device_bench(package, mpnet["calib"], tmp_path / "report",
                              BenchOptions(repeats=1, cold_start_runs=1, baselines=False, profile=None))
    names = [row["configuration"] for row in report["configurations"]]
    assert "edgeinfer off" in names and "edgeinfer int8 (whole model)" in names
    assert any("no adapter for model_type 'mpnet'" in note for note in report["notes"])


def test_whole_model_classifier_runs_its_int8_cascade_and_says_why_it_has_no_exits(mpnet, capsys):
    from edgeinfer import Policy, load
    from edgeinfer.cli import main

    package = mpnet["text-classification"]
    cascade = load(package, policy=Policy(agreement=0.95, precision="int8"))
    full = load(package, policy=Policy.off())
    texts = ["good fun", "awful dull film", "a warm story", "cold rain in the city"]
    answers = [cascade.run(text) for text in texts]
    for text, answer in zip(texts, answers):
        assert answer.trace.restarts == int(answer.trace.precision == "fp32")
        if answer.trace.precision == "fp32":  # restarted: the full model's own answer
            assert answer.label == full.run(text).label
    assert any(a.trace.precision == "int8" for a in answers)
    assert main(["inspect", str(package)]) == 0
    text = capsys.readouterr().out
    assert "exits      none: edgeinfer has no adapter for model_type 'mpnet'" in text and "whole" in text
    assert json.loads((package / "manifest.json").read_text())["precision_variants"][0]["thresholds"]


@pytest.mark.parametrize("command", [["calibrate", "--calib", "{calib}", "-o", "{tmp}/out.edge"],
                                     ["thresholds", "--calib", "{calib}", "-o", "{tmp}/out.edge"],
                                     ["conformance", "-o", "{tmp}/vectors.json"],
                                     ["convert", "--to", "litert", "-o", "{tmp}/out.edge"]])
def test_tools_that_need_blocks_refuse_a_whole_model_package_in_one_line(mpnet, tmp_path, capsys, command):
    from edgeinfer.cli import main

    args = [part.format(calib=mpnet["calib"], tmp=tmp_path) for part in command]
    assert main([args[0], str(mpnet["feature-extraction"]), *args[1:]]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "the whole model in one graph" in error
    assert not (tmp_path / "out.edge").exists()


def test_without_optimum_the_export_names_the_extra(mpnet, tmp_path):
    from edgeinfer.errors import ExportError
    from edgeinfer.export.pipeline import ExportOptions, export_model

    if "optimum" in sys.modules or _importable("optimum.exporters.onnx"):
        pytest.fail("this suite's environment has Optimum: the export-only extra must stay out of .venv")
    with pytest.raises(ExportError) as caught:
        export_model(str(mpnet["feature-extraction-model"]), tmp_path / "x.edge", ExportOptions(task="feature-extraction"))
    assert "pip install 'edgeinfer[optimum]'" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "x.edge").exists()
    with pytest.raises(ExportError, match="--train-exits: edgeinfer has no adapter"):
        export_model(str(mpnet["feature-extraction-model"]), tmp_path / "y.edge",
                     ExportOptions(task="text-classification", train_exits="joint"))


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_whole_exports_a_family_with_an_adapter_as_one_graph_when_asked(tiny_models, tmp_path):
    from edgeinfer import load
    from edgeinfer.manifest_reading import manifest_from_json

    out = tmp_path / "bert.edge"
    done = export_in_optimum_env(tiny_models[("bert", "text-classification")], out, "--task", "text-classification",
                                 "--whole")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = manifest_from_json((out / "manifest.json").read_text())
    assert manifest.is_whole and manifest.export["why"] == "exported whole as asked (--whole)"
    assert [v.name for v in manifest.precision_variants] == ["int8"]  # a classifier's default, as when segmented
    session = load(out)
    answer = session.run("good movie")
    encoded = session.encoder.encode(["good movie"])
    want = transformers_reference(tiny_models[("bert", "text-classification")], "text-classification",
                                  encoded.input_ids, encoded.attention_mask, False)
    assert np.abs(answer.probabilities - want).max() < 1e-5 and answer.trace.segments == ("whole",)
