"""LiteRT: segments converted by litert-torch at token buckets, run by the same executor through
the LiteRT interpreter, with the same answers as onnxruntime."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import venv
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import InputError, PackageError
from edgeinfer.runtime.litert_graphs import LiteRTFile, LiteRTGraph
from edgeinfer.runtime.package import open_package

REPO = Path(__file__).resolve().parents[1]
TEXTS = [line.split("\t")[0] for line in (REPO / "data" / "calibration_sentences.txt").read_text().splitlines()[:48]]
TEXTS += ["ok", "the plot is " + "very " * 40 + "long"]  # shortest bucket, and past the tokenizer's limit


@pytest.fixture(scope="module")
def litert_packages(tiny_models, tiny_packages, tiny_calibration, tmp_path_factory) -> dict[str, Path]:
    """A classifier exported with --formats onnx,litert, and an embedding package converted afterwards."""
    root = tmp_path_factory.mktemp("litert")
    exported = root / "classifier.edge"
    assert main(["export", str(tiny_models[("bert", "text-classification")]), "-o", str(exported),
                 "--task", "text-classification", "--calib", str(tiny_calibration), "--max-length", "24",
                 "--formats", "onnx,litert", "--buckets", "8", "--train-exits", "heads", "--exit-head", "pooler",
                 "--no-quant"]) == 0
    converted = root / "embedding.edge"
    assert main(["convert", str(tiny_packages[("roberta", "feature-extraction")]), "--to", "litert",
                 "--buckets", "16", "-o", str(converted)]) == 0
    return {"classifier": exported, "embedding": converted}


POLICIES = [edgeinfer.Policy.off(), edgeinfer.Policy(agreement=0.95, precision="fp32"),
            edgeinfer.Policy(agreement=None, keep_schedule=((1, 0.5),)),
            edgeinfer.Policy(agreement=None, keep_schedule=((1, 0.6),), reduction="merge"),
            edgeinfer.Policy(agreement=None, skip_blocks=(2,))]


@pytest.mark.parametrize("kind", ["classifier", "embedding"])
@pytest.mark.parametrize("policy", POLICIES, ids=["off", "exits", "prune", "merge", "skip"])
def test_litert_answers_like_onnxruntime(litert_packages, kind, policy):
    reference = edgeinfer.load(litert_packages[kind], policy=policy, profile=None)
    litert = edgeinfer.load(litert_packages[kind], target="litert-cpu", policy=policy, profile=None)
    for texts in (TEXTS, TEXTS[:3]):  # batched, and one by one
        expected = reference.run(texts)
        got = litert.run(texts) if len(texts) > 3 else [litert.run(t) for t in texts]
        for e, g in zip(expected, got):
            assert g.trace.exit_after_block == e.trace.exit_after_block
            assert g.trace.tokens_per_block == e.trace.tokens_per_block
            if kind == "classifier":
                assert g.label == e.label
                np.testing.assert_allclose(g.probabilities, e.probabilities, atol=1e-4)
            else:
                np.testing.assert_allclose(g.embedding, e.embedding, atol=1e-4)
    assert not any(name.startswith("stage") for name in got[0].trace.segments)  # LiteRT has no stage spans


def test_conversion_is_validated_listed_and_hashed(litert_packages):
    for path in litert_packages.values():
        manifest = open_package(path).manifest
        litert = manifest.litert
        assert litert.buckets[-1] == manifest.tokenizer.max_length
        assert {"embed", "head", "full"} <= set(litert.segments) and not any(s.startswith("stage") for s in litert.segments)
        assert litert.files["fp32"] in {f.path for f in manifest.files}
        record = manifest.validation["litert"]
        assert record["passed"] and record["max_abs_diff"] <= record["tolerance"]
        assert {c["bucket"] for c in record["cases"]} == set(litert.buckets)  # every bucket was checked
    assert open_package(litert_packages["classifier"]).manifest.litert.buckets == (8, 24)


def test_a_tampered_litert_file_is_refused(litert_packages, tmp_path):
    copy = tmp_path / "copy.edge"
    shutil.copytree(litert_packages["classifier"], copy)
    tflite = next((copy / "litert").glob("*.tflite"))
    data = bytearray(tflite.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tflite.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="sha256"):
        edgeinfer.load(copy, target="litert-cpu")


def test_litert_target_needs_converted_graphs(tiny_packages):
    with pytest.raises(InputError, match="no LiteRT graphs.*edgeinfer convert"):
        edgeinfer.load(tiny_packages[("bert", "feature-extraction")], target="litert-cpu")


def test_tokens_past_the_last_bucket_are_refused_in_one_line(litert_packages):
    package = open_package(litert_packages["classifier"])
    manifest = package.manifest
    graph = LiteRTGraph(LiteRTFile(package.path(manifest.litert.files["fp32"]), 1), manifest.litert,
                        manifest.segment("block_00"), manifest.tokenizer.pad_id)
    feeds = {"hidden": np.zeros((1, 30, manifest.model.hidden_size), np.float32),
             "attention_bias": np.zeros((1, 30), np.float32)}
    with pytest.raises(InputError, match="30 tokens exceed the largest LiteRT bucket"):
        graph.run(None, feeds)


def test_convert_refuses_bad_requests(litert_packages, tiny_packages, tmp_path, capsys):
    package = str(tiny_packages[("bert", "text-classification")])
    assert main(["convert", package, "--to", "coreml"]) == 2
    assert main(["convert", package, "--to", "litert", "--buckets", "8,x"]) == 2
    assert main(["convert", package, "--to", "litert", "-o", str(litert_packages["embedding"])]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("edgeinfer: error: ") for line in errors)
    assert "--to litert" in errors[0] and "--buckets" in errors[1] and "already exists" in errors[2]


def test_threads_share_a_litert_session(litert_packages):
    session = edgeinfer.load(litert_packages["classifier"], target="litert-cpu", policy=edgeinfer.Policy(agreement=0.95))
    expected = [r.label for r in (session.run(t) for t in TEXTS)]
    barrier = threading.Barrier(4)

    def worker(offset: int) -> list[str]:
        barrier.wait()
        return [session.run(TEXTS[(i + offset) % len(TEXTS)]).label for i in range(len(TEXTS))]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    for offset, labels in enumerate(results):
        assert labels == [expected[(i + offset) % len(TEXTS)] for i in range(len(TEXTS))]


def test_a_precision_variant_keeps_the_litert_graphs(litert_packages, tmp_path):
    out = tmp_path / "int8.edge"
    assert main(["quantize", str(litert_packages["classifier"]), "--quant", "int8", "-o", str(out)]) == 0
    manifest = open_package(out).manifest
    assert manifest.litert == open_package(litert_packages["classifier"]).manifest.litert
    session = edgeinfer.load(out, target="litert-cpu", policy=edgeinfer.Policy.off())
    assert session.run(TEXTS[0]).label == edgeinfer.load(litert_packages["classifier"], policy=edgeinfer.Policy.off()).run(TEXTS[0]).label
    with pytest.raises(InputError, match="no litert graphs at precision 'int8'"):
        edgeinfer.load(out, target="litert-cpu", policy=edgeinfer.Policy(precision="int8", agreement=None))


@pytest.mark.slow
def test_a_fresh_environment_without_torch_runs_a_converted_package(litert_packages, tmp_path):
    """`pip install edgeinfer[litert]` in a new virtual environment: no torch, the package runs."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{REPO}[litert]"], check=True, timeout=900)
    script = ("import importlib.util, json, sys, edgeinfer\n"
              "assert importlib.util.find_spec('torch') is None, 'torch is installed'\n"
              "s = edgeinfer.load(sys.argv[1], target='litert-cpu', policy=edgeinfer.Policy(agreement=0.95, precision='fp32'))\n"
              "print(json.dumps([r.label for r in s.run(sys.argv[2:])]))\n")
    done = subprocess.run([str(python), "-c", script, str(litert_packages["classifier"]), *TEXTS[:8]],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = [r.label for r in edgeinfer.load(litert_packages["classifier"], policy=edgeinfer.Policy(agreement=0.95, precision="fp32")).run(TEXTS[:8])]
    assert done.stdout.strip().splitlines()[-1] == str(expected).replace("'", '"')


def test_litert_int8_variant_runs_its_cascade_on_litert_only(litert_packages, tiny_calibration, tmp_path):
    out = tmp_path / "int8.edge"
    assert main(["convert", str(litert_packages["classifier"]), "--to", "litert", "--quant", "int8",
                 "--calib", str(tiny_calibration), "-o", str(out)]) == 0
    manifest = open_package(out).manifest
    before = open_package(litert_packages["classifier"]).manifest
    assert manifest.validation["litert"] == before.validation["litert"]  # fp32 graphs reused, not converted again
    variant = manifest.precision_variant("litert-int8")
    assert manifest.litert.files["litert-int8"] == "litert/int8.tflite"
    assert (out / "litert" / "int8.tflite").stat().st_size < (out / "litert" / "fp32.tflite").stat().st_size
    assert variant.quality["calibration_examples"] >= 32 and 0.0 <= variant.quality["agreement_with_fp32"] <= 1.0
    assert len(variant.thresholds) == len(manifest.exit_thresholds)
    alone = edgeinfer.load(out, target="litert-cpu", policy=edgeinfer.Policy(agreement=None, precision="litert-int8"))
    fp32 = edgeinfer.load(out, target="litert-cpu", policy=edgeinfer.Policy.off())
    for low, high in zip(alone.run(TEXTS), fp32.run(TEXTS)):
        assert low.trace.precision == "litert-int8"
        np.testing.assert_allclose(low.probabilities, high.probabilities, atol=0.05)  # int8, not another model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cascade = edgeinfer.load(out, target="litert-cpu",
                                 policy=edgeinfer.Policy(agreement=0.95, precision="litert-int8", fallback="nearest"))
    said = " ".join(str(w.message) for w in caught)
    # whatever ran instead of the variant was said at load, and every trace tells what ran
    assert (cascade.precision == "fp32") == ("certifies no answer at agreement 0.95 (" in said)
    for result in cascade.run(TEXTS):
        assert result.trace.precision_requested == "litert-int8"
        if result.trace.precision == "fp32":
            assert result.trace.restarts or "certifies no answer" in said
    with pytest.raises(InputError, match="no onnxruntime graphs at precision 'litert-int8'"):
        edgeinfer.load(out, policy=edgeinfer.Policy(agreement=0.95, precision="litert-int8"))


def test_a_litert_memory_budget_counts_the_litert_file(litert_packages):
    package = litert_packages["classifier"]
    need = edgeinfer.load(package, target="litert-cpu", policy=edgeinfer.Policy.off()).memory
    tflite = (package / "litert" / "fp32.tflite").stat().st_size / 2**20
    assert need.weights_mb == pytest.approx(tflite)
    with pytest.raises(edgeinfer.BudgetError, match="give at least"):
        edgeinfer.load(package, target="litert-cpu", budget=edgeinfer.Budget(memory_mb=need.total_mb / 2))


def test_probe_measures_the_litert_graphs(litert_packages, monkeypatch):
    from edgeinfer.targets.probe import ProbePlan, probe

    monkeypatch.setattr("edgeinfer.targets.probe.QUICK", ProbePlan(tokens=(8, 24), batches=(1,), warmup_rounds=1, rounds=3))
    package = litert_packages["classifier"]
    profile = probe(package, target="litert-cpu", quick=True)
    litert = open_package(package).manifest.litert
    assert {c.segment for c in profile.costs} == set(litert.segments)  # no stage spans on LiteRT
    assert profile.fingerprint["provider"] == "LiteRT-XNNPACK" and profile.fingerprint["litert"].startswith("ai-edge-litert")
    assert all(m > 0 for c in profile.costs for m in c.median_ms)


def test_an_old_tflite_runtime_is_refused_in_one_line(litert_packages, monkeypatch):
    """tflite-runtime 2.14 cannot run current converters' op versions: one line naming the fix."""
    import types

    class OldInterpreter:
        def __init__(self, model_path: str, num_threads: int):
            raise ValueError("Didn't find op for builtin opcode 'GATHER_ND' version '5'. An older version of this "
                             "builtin might be supported.\nRegistration failed.")

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = OldInterpreter
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    monkeypatch.setattr("edgeinfer.runtime.litert_graphs.litert_library", lambda: "tflite-runtime")
    session = edgeinfer.load(litert_packages["classifier"], target="litert-cpu", policy=edgeinfer.Policy.off())
    with pytest.raises(PackageError, match=r"tflite-runtime cannot load fp32.tflite \(Didn't find op .*GATHER_ND.*\); "
                                           r"pip install 'edgeinfer\[litert\]'"):
        session.run("a fine film")
