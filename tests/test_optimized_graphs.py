"""The per-device cache of optimized graphs: same answers, and a changed cache file is not trusted."""

from __future__ import annotations

import numpy as np

import edgeinfer


def _folders(cache):
    return sorted(p for p in (cache / "optimized").iterdir() if not p.name.startswith("."))


def test_cached_optimized_graph_answers_like_the_package_graph(tiny_packages, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    package = tiny_packages[("bert", "text-classification")]
    text = "good movie with a dull plot"
    plain = edgeinfer.load(package, policy=edgeinfer.Policy.off(), optimized_cache=False).run(text)
    assert not (tmp_path / "optimized").exists()
    first = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)  # writes the cache
    (folder,) = _folders(tmp_path)
    assert (folder / "graph.onnx").is_file() and (folder / "stamp.json").is_file()
    written = (folder / "graph.onnx").stat().st_mtime_ns
    second = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)  # reads it
    assert (folder / "graph.onnx").stat().st_mtime_ns == written
    for result in (first, second):
        np.testing.assert_allclose(result.probabilities, plain.probabilities, atol=1e-5)


def test_an_unwritable_cache_only_costs_the_cache(tiny_packages, tmp_path, monkeypatch):
    """A file where the cache folder should be: the package still loads and answers, uncached."""
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("EDGEINFER_CACHE", str(cache))
    package = tiny_packages[("bert", "text-classification")]
    text = "good movie with a dull plot"
    plain = edgeinfer.load(package, policy=edgeinfer.Policy.off(), optimized_cache=False).run(text)
    answer = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)
    np.testing.assert_allclose(answer.probabilities, plain.probabilities, atol=1e-5)
    assert cache.read_text() == "not a folder"


def test_a_changed_cache_file_is_rebuilt(tiny_packages, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    package = tiny_packages[("bert", "text-classification")]
    text = "good movie"
    reference = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)
    (folder,) = _folders(tmp_path)
    (folder / "graph.onnx").write_bytes(b"not a graph")  # identity changes: the stamp no longer holds
    again = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)
    np.testing.assert_allclose(again.probabilities, reference.probabilities, atol=1e-6)
    assert (folder / "graph.onnx").read_bytes() != b"not a graph"  # rebuilt from the package graph
    monkeypatch.setenv("EDGEINFER_OPTIMIZED_CACHE", "0")
    other = tmp_path / "other"
    monkeypatch.setenv("EDGEINFER_CACHE", str(other))
    edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)
    assert not (other / "optimized").exists()


def test_the_cache_is_trimmed_least_recently_used_first(tmp_path):
    import os

    from edgeinfer.runtime.optimized_graphs import trim

    cache = tmp_path / "optimized"
    for age, name in enumerate(["newest", "middle", "oldest"]):
        entry = cache / name
        entry.mkdir(parents=True)
        (entry / "weights.bin").write_bytes(b"x" * 1000)
        os.utime(entry, (1e9 - age * 100, 1e9 - age * 100))
    trim(cache, cap=2500, keep=None)
    assert sorted(p.name for p in cache.iterdir()) == ["middle", "newest"]
    trim(cache, cap=500, keep=cache / "middle")
    assert sorted(p.name for p in cache.iterdir()) == ["middle"]  # the entry just written stays


def test_cache_command_lists_and_clears(tmp_path, monkeypatch, capsys):
    from edgeinfer.cli import main

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    (tmp_path / "optimized" / "a").mkdir(parents=True)
    (tmp_path / "optimized" / "a" / "graph.onnx").write_bytes(b"x" * 2**20)
    (tmp_path / "verified").mkdir()
    assert main(["cache", "--info"]) == 0
    assert "optimized" in capsys.readouterr().out
    assert main(["cache", "--clear", "optimized"]) == 0
    assert not (tmp_path / "optimized").exists() and (tmp_path / "verified").exists()
    assert main(["cache", "--clear"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_cached_graph_with_a_forged_stamp_is_not_trusted(tiny_packages, tmp_path, monkeypatch):
    """Whoever swaps the cached graph can write a stamp with its new identity, but not seal it: the
    graph is optimized again from the package."""
    import json

    from edgeinfer.runtime.verified import identity

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    package = tiny_packages[("bert", "text-classification")]
    reference = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run("good movie")
    (folder,) = _folders(tmp_path)
    (folder / "graph.onnx").write_bytes(b"poisoned")
    forged = {name: identity(folder / name) for name in ("graph.onnx", "weights.bin")}
    (folder / "stamp.json").write_text(json.dumps({"payload": forged, "seal": "0" * 64}))
    again = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run("good movie")
    np.testing.assert_allclose(again.probabilities, reference.probabilities, atol=1e-6)
    assert (folder / "graph.onnx").read_bytes() != b"poisoned"


def test_a_signed_package_neither_reads_nor_writes_the_cache(tiny_packages, tmp_path, monkeypatch):
    from edgeinfer.runtime.signing import generate_key, sign_package

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    package = tmp_path / "signed.edge"
    import shutil

    shutil.copytree(tiny_packages[("bert", "text-classification")], package)
    generate_key(tmp_path / "publisher")
    sign_package(package, tmp_path / "publisher")
    edgeinfer.load(package, policy=edgeinfer.Policy.off(), verify_key=tmp_path / "publisher.pub").run("good movie")
    assert not (tmp_path / "cache" / "optimized").exists()
