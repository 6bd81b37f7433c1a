"""The reader refuses damaged, tampered or too-new packages with one line, before onnxruntime."""

from __future__ import annotations

import json
import shutil

import pytest

import edgeinfer
from edgeinfer.errors import PackageError
from edgeinfer.runtime.package import open_package


@pytest.fixture
def package_copy(tiny_packages, tmp_path):
    target = tmp_path / "copy.edge"
    shutil.copytree(tiny_packages[("bert", "text-classification")], target)
    return target


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_changed_byte_in_a_graph(package_copy):
    graph = package_copy / "graphs" / "block_01.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(PackageError) as err:
        edgeinfer.load(package_copy)
    assert "graphs/block_01.onnx fails its sha256 check" in _one_line(err)


def test_newer_major_version(package_copy):
    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["schema_version"] = "2.0"
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert "newer than this edgeinfer reads" in _one_line(err)


def test_missing_file(package_copy):
    (package_copy / "graphs" / "head.onnx").unlink()
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert "graphs/head.onnx is missing" in _one_line(err)


def test_path_leaving_the_package(package_copy):
    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["files"][0]["path"] = "../outside.onnx"
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert "leaves the package" in _one_line(err)


def test_graph_not_listed_in_files(package_copy):
    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "graphs/exit_01.onnx"]
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert "not listed in its files" in _one_line(err)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("segments"), "segments is missing"),
    (lambda m: m["model"].update(num_blocks="six"), "model.num_blocks must be int"),
    (lambda m: m.update(format="other"), "not an edge package"),
    (lambda m: m["exit_thresholds"][0].update(thresholds=[0.5]), "do not match the exits"),
])
def test_malformed_manifest(package_copy, edit, message):
    manifest = json.loads((package_copy / "manifest.json").read_text())
    edit(manifest)
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert message in _one_line(err)


def test_not_json(package_copy):
    (package_copy / "manifest.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        open_package(package_copy)
