"""The real models: all-MiniLM-L6-v2 (PyPI) and the MiniLM fine-tuned on SST-2 (shared/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.runtime.package import open_package

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run_with_onnxruntime.py"


def test_minilm_package_lists_six_blocks_and_exit_thresholds(minilm_package):
    out = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "inspect", str(minilm_package)],
                         capture_output=True, text=True, check=True).stdout
    for i in range(6):
        assert f"block_{i:02d}" in out
    manifest = open_package(minilm_package).manifest
    assert [e.after_block for e in manifest.exits] == [1, 2, 3, 4, 5]
    assert manifest.model.normalize_embedding is True
    assert manifest.validation["passed"] and manifest.validation["max_abs_diff"] <= 1e-4
    assert "expected mean depth" in out and "0.99" in out


def test_minilm_full_depth_is_the_sentence_transformers_embedding(minilm_package):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgeinfer.export.model_source import resolve_model_dir

    directory, _ = resolve_model_dir("minilm")
    model = AutoModel.from_pretrained(str(directory)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    text = "The battery on this phone lasts two full days."
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    expected = torch.nn.functional.normalize(hidden.mean(1), dim=-1)[0].numpy()
    got = edgeinfer.load(minilm_package, policy=edgeinfer.Policy(agreement=None)).run(text).embedding
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_sst2_package_records_exit_quality_on_dev(sst2_package):
    manifest = open_package(sst2_package).manifest
    evaluation = manifest.evaluation
    assert evaluation["examples"] == 436 and evaluation["data"].endswith("sst2/dev.tsv")
    assert evaluation["final_accuracy"] == pytest.approx(0.890, abs=0.005)
    assert [e["after_block"] for e in evaluation["exits"]] == [1, 2, 3, 4, 5]
    # exit heads that read the mean pool answer far better than chance from block 1 on
    assert all(e["accuracy"] > 0.7 for e in evaluation["exits"])
    level = manifest.thresholds_for(0.99)
    assert level.agreement == 0.99 and level.expected_mean_depth < 6.0


def test_example_reproduces_edgeinfer_on_the_sst2_package(sst2_package):
    text = "a gorgeous , witty , seductive movie ."
    ours = edgeinfer.load(sst2_package, policy=edgeinfer.Policy(agreement=None)).run(text)
    out = subprocess.run([sys.executable, str(EXAMPLE), str(sst2_package), text], capture_output=True, text=True,
                         check=True)
    theirs = json.loads(out.stdout)
    assert theirs["label"] == ours.label == "positive"
    np.testing.assert_allclose(theirs["probabilities"], ours.probabilities, atol=1e-5)
