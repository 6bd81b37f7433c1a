"""The TypeScript runtime (js/) against the Python one: the same conformance vectors reproduced in
Node, and the same refusals. Needs Node 20+ and js/node_modules (`./run.sh test` installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeinfer.cli import main
from edgeinfer.targets.conformance import write_vectors

JS = Path(__file__).resolve().parents[1] / "js"
CLASSIFIER, EMBEDDER = ("bert", "text-classification"), ("bert", "feature-extraction")


@pytest.fixture(scope="session")
def js_runtime() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the TypeScript runtime's tests need Node 20+ and npm (`./run.sh test` expects them)")
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True, timeout=600)
    built = subprocess.run([npm, "run", "build"], cwd=JS, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return JS


def _node_test(js: Path, test_file: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["node", "--test", f"test/{test_file}"], cwd=js, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})


def test_node_reproduces_the_conformance_vectors(js_runtime, tiny_packages, quantized, tmp_path):
    files = [write_vectors(package, tmp_path / name, limit=40)
             for name, package in (("classifier", tiny_packages[CLASSIFIER]), ("int8", quantized),
                                   ("embedder", tiny_packages[EMBEDDER]))]
    done = _node_test(js_runtime, "conformance.test.mjs", {"EDGEINFER_VECTORS": os.pathsep.join(map(str, files))})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout


def test_node_refuses_what_python_refuses(js_runtime, tiny_packages, tmp_path, capsys):
    signed = tmp_path / "signed.edge"
    shutil.copytree(tiny_packages[CLASSIFIER], signed)
    for name in ("key", "other"):
        assert main(["keygen", "--out", str(tmp_path / name)]) == 0
    assert main(["sign", str(signed), "--key", str(tmp_path / "key")]) == 0
    done = _node_test(js_runtime, "package.test.mjs", {
        "EDGEINFER_PACKAGE": str(tiny_packages[CLASSIFIER]), "EDGEINFER_SIGNED": str(signed),
        "EDGEINFER_KEY": str(tmp_path / "key.pub"), "EDGEINFER_OTHER_KEY": str(tmp_path / "other.pub")})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout


def test_chromium_reproduces_the_vectors_and_the_demo_answers(js_runtime, tiny_packages, quantized, tmp_path):
    """onnxruntime-web (WASM) in Debian's headless Chromium, driven by puppeteer-core."""
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.fail("Chromium is not installed: `./run.sh test` installs Debian's package when run as root")
    files = [write_vectors(package, tmp_path / name, limit=24)
             for name, package in (("classifier", tiny_packages[CLASSIFIER]), ("int8", quantized),
                                   ("embedder", tiny_packages[EMBEDDER]))]
    done = _node_test(js_runtime, "browser.test.mjs", {"EDGEINFER_VECTORS": os.pathsep.join(map(str, files))})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "in Chromium (WASM" in done.stdout


def test_node_searches_an_index_the_python_runtime_saved(js_runtime, quantized_embedder, tiny_packages,
                                                         tiny_calibration, tmp_path):
    import json

    import edgeinfer

    texts = list(dict.fromkeys(line.split("\t")[0] for line in tiny_calibration.read_text().splitlines()[1:]))
    cascade = edgeinfer.search_index(quantized_embedder, texts, agreement=0.97)
    exact = edgeinfer.search_index(quantized_embedder, texts, precision="fp32")
    cascade.save(tmp_path / "cascade.index")
    exact.save(tmp_path / "exact.index")
    queries = ["good film", "a slow dull plot", "the actors were great", "bad", "what a waste of time"] + texts[:15]

    def hits(index):
        return [{"query": q, "ids": list(h.ids), "scores": list(h.scores), "rescued": h.rescued}
                for q in queries for h in [index.search(q, k=5)]]

    gate = cascade.gate
    cases = {"package": str(quantized_embedder), "other": str(tiny_packages[EMBEDDER]),
             "cascade": str(tmp_path / "cascade.index"), "exact": str(tmp_path / "exact.index"),
             "gate": {"agreement": gate.agreement, "margin": gate.margin, "sampled": gate.sampled,
                      "rescuedShare": gate.rescued_share, "changed": gate.changed, "bound": gate.bound},
             "cascade_hits": hits(cascade), "exact_hits": hits(exact)}
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    done = _node_test(js_runtime, "search.test.mjs", {"EDGEINFER_INDEX_CASES": str(tmp_path / "cases.json")})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 3" in done.stdout
