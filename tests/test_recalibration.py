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


def test_each_input_takes_the_thresholds_of_its_length_range(tiny_packages):
    from edgeinfer.manifest import ExitThresholds, LengthThresholds

    package = tiny_packages[("bert", "text-classification")]
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95))
    exits = len(session.manifest.exits)
    short, long = "good", "a long and winding story about nothing at all in the city"
    limit = session.encoder.encode([short]).input_ids.shape[1]
    assert session.encoder.encode([long]).input_ids.shape[1] > limit
    # inputs up to `limit` tokens leave at the first exit; longer ones never leave early
    level = ExitThresholds(0.95, (None,) * exits, (0.0,) * (exits + 1), 1.0, 1.0, by_length=(
        LengthThresholds(limit, (0.0,) * exits, 300), LengthThresholds(None, (None,) * exits, 300)))
    session.plan = session.plan.with_level(session.manifest, level, session.restart_threshold, session.precision)
    blocks = len(session.manifest.blocks())
    assert session.run(short).trace.exit_after_block == 1
    assert session.run(long).trace.exit_after_block == blocks
    batched = session.run([short, long, short])
    assert [r.trace.exit_after_block for r in batched] == [1, blocks, 1]


def test_calibration_per_length_range_holds_each_range_to_its_own_count():
    from edgeinfer.export.thresholds import calibrate_level, simulate_level

    rng = np.random.default_rng(4)
    n = 1600
    lengths = np.where(np.arange(n) < 1000, 10, 40)  # two ranges: <= 32 tokens (empty 17-32 joins) and longer
    confidence = rng.uniform(0.5, 1.0, size=(n, 3))
    # long inputs disagree far more often at the same confidence: one pooled threshold would let
    # them through on the short inputs' evidence
    p_agree = np.where(lengths[:, None] > 32, confidence ** 12, confidence ** 2)
    agrees = rng.uniform(size=(n, 3)) < p_agree
    level = calibrate_level(confidence, agrees, [1, 2, 3], 4, 0.98, lengths)
    assert [r.max_tokens for r in level.by_length] == [32, None]
    assert [r.examples for r in level.by_length] == [1000, 600]
    for r, rows in zip(level.by_length, (lengths <= 32, lengths > 32)):
        outcome = simulate_level(confidence[rows], agrees[rows], level, lengths[rows])
        assert outcome.disagreements <= max(allowed_disagreements(int(rows.sum()), 0.98), 0)
    strict = level.by_length[1].thresholds[0]
    assert strict is None or strict >= level.by_length[0].thresholds[0]
