"""`edgeinfer thresholds`: exit thresholds calibrated again on unlabeled texts like the deployment's."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import InputError
from edgeinfer.export.exit_quality import judge
from edgeinfer.export.recalibrate import recalibrate_thresholds
from edgeinfer.export.thresholds import allowed_disagreements, simulate
from edgeinfer.quant.output_error import encode_batches
from edgeinfer.quant.variant_thresholds import onnx_graphs, variant_outputs
from edgeinfer.runtime.package import open_package


def _texts(n: int, seed: int) -> list[str]:
    from conftest import WORDS

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 16))) for _ in range(n)]


def test_thresholds_from_unlabeled_text_keep_the_allowed_count_on_it(tiny_packages, tmp_path, capsys):
    package = tiny_packages[("bert", "text-classification")]
    texts = _texts(300, seed=11)
    source = tmp_path / "traffic.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "recalibrated.edge"
    assert main(["thresholds", str(package), "--calib", str(source), "-o", str(out)]) == 0
    assert "95% confidence over any run of 300 or more inputs" in capsys.readouterr().out
    opened = open_package(out)
    manifest = opened.manifest
    assert manifest.calibration["thresholds"]["examples"] == 300
    # an independent replay: the package's own graphs on the same texts, the thresholds it stored
    per_exit, final = variant_outputs(onnx_graphs(opened.root, "fp32"), manifest, encode_batches(opened, texts))
    confidence, agrees = judge("text-classification", per_exit, final)
    for level in manifest.exit_thresholds:
        outcome = simulate(confidence, agrees, list(level.thresholds))
        assert outcome.disagreements <= max(allowed_disagreements(300, level.agreement), 0)
    assert main(["inspect", str(out)]) == 0
    assert "guarantee  for each level L, agreement >= L with 95% confidence" in capsys.readouterr().out
    session = edgeinfer.load(out, policy=edgeinfer.Policy(agreement=0.95))
    assert session.run("good movie").label is not None


def test_thresholds_refuses_too_few_texts_and_leaves_the_package_alone(tiny_packages, tmp_path):
    package = tiny_packages[("bert", "text-classification")]
    before = (package / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="at least 50 texts"):
        recalibrate_thresholds(package, _texts(20, seed=1), "few")
    assert (package / "manifest.json").read_bytes() == before
    assert json.loads(before)["exit_thresholds"]
