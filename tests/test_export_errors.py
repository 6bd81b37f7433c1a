"""Bad export input: one clear error, nothing written or touched."""

from __future__ import annotations

import json

import pytest

from edgeinfer.errors import ExportError
from edgeinfer.export.pipeline import export_model
from conftest import plain_options


def _no_leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_missing_directory(tmp_path):
    with pytest.raises(ExportError, match="neither a directory nor a built-in name"):
        export_model(str(tmp_path / "nowhere"), tmp_path / "out.edge")
    assert not (tmp_path / "out.edge").exists()


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ExportError, match=r"no adapter for model_type 'gpt2' \(adapters: bert, distilbert, electra, roberta"):
        export_model(str(tmp_path / "gpt"), tmp_path / "out.edge")


def test_exits_out_of_range(tiny_models, tmp_path):
    with pytest.raises(ExportError, match=r"out of range: this model has 3 blocks"):
        export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "o.edge", plain_options(exits="1,3"))
    with pytest.raises(ExportError, match="must be block numbers"):
        export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "o.edge", plain_options(exits="x"))
    assert _no_leftovers(tmp_path) == []


@pytest.mark.parametrize("content, message", [
    ("", "has no examples"),
    ("\n\n  \n", "has no examples"),
    ("words\tlabel\nsome text\t1\n", "has no text column"),
    ("sentence\tlabel\ngood movie\tmaybe\n", "neither an integer nor a label"),
    ("sentence\tlabel\ngood movie\t7\n", "outside the model's 2 classes"),
    ("sentence\tlabel\ngood\tmovie\t1\n", "3 fields where the header has 2"),
])
def test_bad_calibration_file(tiny_models, tmp_path, content, message):
    calib = tmp_path / "calib.tsv"
    calib.write_text(content)
    with pytest.raises(ExportError, match=message):
        export_model(str(tiny_models[("bert", "text-classification")]), tmp_path / "o.edge",
                     plain_options(task="text-classification", calib=str(calib)))
    assert not (tmp_path / "o.edge").exists()


def test_existing_output_untouched_without_force(tiny_models, tiny_calibration, tmp_path):
    out = tmp_path / "o.edge"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_model(str(tiny_models[("bert", "feature-extraction")]), out, plain_options(calib=str(tiny_calibration)))
    assert (out / "keep.txt").read_text() == "mine"
    export_model(str(tiny_models[("bert", "feature-extraction")]), out,
                 plain_options(calib=str(tiny_calibration), force=True))
    assert (out / "manifest.json").is_file() and not (out / "keep.txt").exists()
    assert _no_leftovers(tmp_path) == []


def test_failure_midway_leaves_nothing(tiny_models, tiny_calibration, tmp_path, monkeypatch):
    from edgeinfer.export import pipeline

    def broken(*args, **kwargs):
        raise ExportError("validation failed: simulated")

    monkeypatch.setattr(pipeline, "validate_graphs", broken)
    with pytest.raises(ExportError, match="simulated"):
        export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "o.edge",
                     plain_options(calib=str(tiny_calibration)))
    assert list(tmp_path.iterdir()) == []


def test_classification_needs_a_trained_head(tiny_models, tmp_path):
    with pytest.raises(ExportError, match="no trained classification head"):
        export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "o.edge",
                     plain_options(task="text-classification"))


def test_embedding_export_ignores_class_names_in_a_label_column(tiny_models, tmp_path):
    calib = tmp_path / "named.tsv"
    calib.write_text("text\tlabel\n" + "".join(f"good movie {i}\tWorld\n" for i in range(40)))
    manifest = export_model(str(tiny_models[("bert", "feature-extraction")]), tmp_path / "o.edge",
                            plain_options(calib=str(calib), eval_data=str(calib)))
    assert manifest.calibration["exit_training"]["labels_used"] is False
    assert manifest.evaluation["examples"] == 40


@pytest.mark.parametrize("command", ["export", "bench", "calibrate", "quantize", "demo"])
def test_a_missing_extra_is_one_line_before_any_work(command, monkeypatch, tmp_path, capsys):
    import importlib.util

    from edgeinfer.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    out = tmp_path / "out"
    argv = {"export": ["export", "minilm", "-o", str(out)], "bench": ["bench", "p.edge", "--data", "d.tsv", "--report", str(out)],
            "calibrate": ["calibrate", "p.edge", "--calib", "d.tsv"], "quantize": ["quantize", "p.edge", "--calib", "d.tsv"],
            "demo": ["demo", "--out", str(out)]}[command]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "pip install 'edgeinfer[export]'" in error and "scipy" in error
    assert not out.exists()


def test_two_writes_to_one_path_without_force_cannot_both_land(tiny_packages, tmp_path):
    import shutil

    from edgeinfer.errors import ExportError
    from edgeinfer.export.package_writer import finalize, prepare_staging
    from edgeinfer.runtime.package import open_package

    source = tiny_packages[("bert", "text-classification")]
    manifest = open_package(source).manifest
    output = tmp_path / "p.edge"
    first, second = prepare_staging(output, force=False), prepare_staging(output, force=False)  # both start
    for staging in (first, second):
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.*"))
    finalize(first, output, manifest)
    with pytest.raises(ExportError, match="was created by another export while this one ran; pass --force"):
        finalize(second, output, manifest)
    assert open_package(output).manifest.model == manifest.model


def test_what_killed_writes_left_is_swept(tmp_path):
    from edgeinfer.export.package_writer import prepare_staging

    output = tmp_path / "p.edge"
    dead = tmp_path / ".p.edge.tmp-999999999-deadbeef"
    (dead / "graphs").mkdir(parents=True)
    (dead / "graphs" / "weights.bin").write_bytes(b"x" * 1000)
    live = prepare_staging(output, force=False)
    assert not dead.exists() and live.exists()
    prepare_staging(output, force=False)
    assert live.exists()  # this process is alive: its staging stays
