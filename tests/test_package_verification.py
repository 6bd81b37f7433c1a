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


def _rehash(root) -> None:
    """What a hostile publisher does after editing a file: make the manifest's digests match again."""
    from edgeinfer.manifest import file_entry

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = [vars(file_entry(root, f["path"])) if (root / f["path"]).exists() else f
                         for f in manifest["files"]]
    (root / "manifest.json").write_text(json.dumps(manifest))


def _point_external_data(graph_path, location: str) -> None:
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(graph_path))


@pytest.mark.parametrize("location, message", [
    ("../../../../etc/passwd", "outside the package"),
    ("/etc/passwd", "outside the package"),
    ("stolen.bin", "does not list"),
])
def test_external_data_location_is_checked_before_onnxruntime(package_copy, location, message):
    graph = package_copy / "graphs" / "block_01.onnx"
    _point_external_data(graph, location)
    (package_copy / "graphs" / "stolen.bin").write_bytes((package_copy / "graphs" / "weights.bin").read_bytes())
    _rehash(package_copy)
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert message in _one_line(err) and "block_01" in _one_line(err)


def test_symlink_leading_out_is_refused(package_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(package_copy / "graphs" / "head.onnx", outside)
    (package_copy / "graphs" / "head.onnx").unlink()
    (package_copy / "graphs" / "head.onnx").symlink_to(outside)
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert "resolves outside the package" in _one_line(err)


def test_huge_declared_size_is_refused(package_copy):
    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["files"][0]["bytes"] = 2 * 1024**3
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    assert "the manifest says 2147483648" in _one_line(err)


def test_verified_files_are_not_hashed_again_until_they_change(package_copy, monkeypatch, tmp_path):
    """A second open trusts files whose identity (inode, size, mtime, ctime) is unchanged since they
    passed; a file written after that is hashed again and refused."""
    import edgeinfer.runtime.package as package_module

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    open_package(package_copy)  # full check, stamp written
    hashed = []
    real = package_module.file_entry
    monkeypatch.setattr(package_module, "file_entry", lambda root, rel: hashed.append(rel) or real(root, rel))
    open_package(package_copy)
    assert hashed == []  # weights.bin (hashed by file_entry) was trusted from the stamp
    weights = package_copy / "graphs" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="weights.bin fails its sha256 check"):
        open_package(package_copy)
    assert hashed == ["graphs/weights.bin"]


@pytest.mark.parametrize("forgery", ["unsealed", "loose key"])
def test_a_forged_stamp_does_not_skip_the_hash(package_copy, monkeypatch, tmp_path, forgery):
    """A stamp for a swapped file (same size, its new identity) is worth nothing unless this runtime
    sealed it with the cache's private key; a key others can read or write is not trusted either."""
    import hashlib
    import hmac
    import os

    from edgeinfer.runtime.verified import identity

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEINFER_CACHE", str(cache))
    open_package(package_copy)  # a genuine, sealed stamp and the cache's key
    weights = package_copy / "graphs" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    manifest_bytes = (package_copy / "manifest.json").read_bytes()
    forged = {entry["path"]: identity(package_copy / entry["path"]) for entry in json.loads(manifest_bytes)["files"]}
    stamp = cache / "verified" / f"{hashlib.sha256(manifest_bytes).hexdigest()[:32]}.json"
    if forgery == "unsealed":
        stamp.write_text(json.dumps({"payload": forged, "seal": "0" * 64}))
    else:  # sealed with the real key, which others could read: a forger's seal
        os.chmod(cache / "seal.key", 0o644)
        mac = hmac.new((cache / "seal.key").read_bytes(), json.dumps(forged, sort_keys=True).encode(), hashlib.sha256)
        stamp.write_text(json.dumps({"payload": forged, "seal": mac.hexdigest()}))
    with pytest.raises(PackageError, match="weights.bin fails its sha256 check"):
        open_package(package_copy)


def test_external_data_named_inside_a_model_local_function_is_found():
    from onnx import TensorProto, helper

    from edgeinfer.runtime.onnx_wire import external_locations

    tensor = helper.make_tensor("c", TensorProto.FLOAT, [1], [0.0])
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("float_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    function = helper.make_function("local", "F", [], ["y"], [helper.make_node("Constant", [], ["y"], value=tensor)],
                                    [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("F", [], ["out"], domain="local")], "g", [],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    assert external_locations(model.SerializeToString()) == {"../../etc/passwd"}
    training = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])  # and in a training-info graph
    training.data_location = TensorProto.EXTERNAL
    training.ClearField("float_data")
    entry = training.external_data.add()
    entry.key, entry.value = "location", "/etc/shadow"
    model.training_info.add().initialization.CopyFrom(helper.make_graph([], "init", [], [], [training]))
    assert external_locations(model.SerializeToString()) == {"../../etc/passwd", "/etc/shadow"}


MANIFEST_LIES = {
    "a schema version that is not MAJOR.MINOR": (lambda m: m.__setitem__("schema_version", "1"), "not MAJOR.MINOR"),
    "an agreement of 7.5": (lambda m: m["exit_thresholds"][0].__setitem__("agreement", 7.5), "outside"),
    "a negative exit share": (lambda m: m["exit_thresholds"][0]["exit_shares"].__setitem__(0, -0.5), "outside"),
    "graph inputs the graph does not take": (
        lambda m: [s.__setitem__("inputs", ["hidden"]) for s in m["segments"] if s["kind"] == "span"], "takes inputs"),
    "more labels than the head answers": (lambda m: m["model"].__setitem__("labels", ["a", "b", "c"]), "classes"),
    "a pad id outside the vocabulary": (lambda m: m["tokenizer"].__setitem__("pad_id", 10**9), "outside the tokenizer"),
    "a max_length past the position table": (lambda m: m["tokenizer"].__setitem__("max_length", 4096), "positions"),
    "token type ids the graph does not take": (
        lambda m: m["tokenizer"].__setitem__("uses_token_type_ids", False), "token_type_ids"),
    "a number too large for a float": (
        lambda m: m["exit_thresholds"][0].__setitem__("expected_mean_depth", 10**400), "too large"),
    "a lone surrogate in a path": (lambda m: m["tokenizer"].__setitem__("path", "tokenizer/\ud800.json"), "surrogate"),
    "calibration lengths that are not numbers": (
        lambda m: m["calibration"]["thresholds"]["lengths"].__setitem__("min", "x"), "lengths.min"),
    "a threshold outside its confidence's range": (
        lambda m: m["exit_thresholds"][0]["thresholds"].__setitem__(0, -1), "range"),
    "exit shares that do not add up": (lambda m: m["exit_thresholds"][0]["exit_shares"].__setitem__(0, 0.9), "add up"),
    "a mean depth past the last block": (
        lambda m: m["exit_thresholds"][0].__setitem__("expected_mean_depth", 7.5), "mean depth"),
    "a resident size below the file's": (
        lambda m: m["segments"][1]["variants"][0].__setitem__("resident_bytes", 0), "in memory"),
}


@pytest.mark.parametrize("lie", sorted(MANIFEST_LIES))
def test_a_manifest_that_lies_is_refused_at_load(tiny_packages, tmp_path, lie):
    import json
    import shutil

    import edgeinfer
    from edgeinfer.errors import PackageError

    edit, message = MANIFEST_LIES[lie]
    package = tmp_path / "lie.edge"
    shutil.copytree(tiny_packages[("bert", "text-classification")], package)
    manifest = json.loads((package / "manifest.json").read_text())
    edit(manifest)
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=message):
        edgeinfer.load(package, policy=edgeinfer.Policy.off(), optimized_cache=False)


def test_a_graph_swapped_after_load_is_refused_when_it_opens(tiny_packages, tmp_path):
    import shutil

    import edgeinfer
    from edgeinfer.errors import PackageError

    package = tmp_path / "swap.edge"
    shutil.copytree(tiny_packages[("bert", "text-classification")], package)
    session = edgeinfer.load(package, policy=edgeinfer.Policy.off(), optimized_cache=False)  # graphs open lazily
    full = package / "graphs" / "full.onnx"
    data = bytearray(full.read_bytes())
    data[-1] ^= 0xFF
    full.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="changed on disk after the package was verified"):
        session.run("a good movie")


def test_a_graph_of_zeros_is_refused_at_once():
    import time

    from edgeinfer.errors import PackageError
    from edgeinfer.runtime.onnx_wire import external_locations

    started = time.perf_counter()
    with pytest.raises(PackageError, match="field number 0"):
        external_locations(bytes(64 * 2**20))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("record", [{"validation": {"passed": "maybe", "max_abs_diff": "big"}},
                                    {"evaluation": {"accuracy": [1], "levels": "x"}},
                                    {"calibration": {"thresholds": {"guarantee": 5, "lengths": "x"}}}])
def test_inspect_of_odd_records_is_one_line(tiny_packages, tmp_path, capsys, record):
    import json
    import shutil

    from edgeinfer.cli import main

    package = tmp_path / "odd.edge"
    shutil.copytree(tiny_packages[("bert", "text-classification")], package)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest.update(record)
    (package / "manifest.json").write_text(json.dumps(manifest))
    code = main(["inspect", str(package)])
    err = capsys.readouterr().err
    assert code in (0, 2) and err.count("\n") <= 1 and "Traceback" not in err


def test_a_graph_of_countless_tiny_fields_is_refused_in_bounded_time(package_copy):
    """Valid protobuf (ir_version, repeated), listed and checksummed: walking it field by field would
    take seconds; the package's field budget (one field per 2 KB of package, beyond a base) refuses it
    after about 100,000."""
    import re

    (package_copy / "graphs" / "block_01.onnx").write_bytes(b"\x08\x01" * 3_000_000)
    _rehash(package_copy)
    with pytest.raises(PackageError) as err:
        open_package(package_copy)
    walked = re.search(r"more than ([0-9,]+) protobuf fields", _one_line(err))
    assert walked is not None and int(walked.group(1).replace(",", "")) < 110_000


def test_nodes_that_cannot_name_external_data_are_not_walked():
    """A node is walked only when its bytes hold "location", the one key onnxruntime follows: the
    fields an exported graph's nodes hold cost nothing, and a Constant that names a file is still found."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edgeinfer.runtime.onnx_wire import field_budget, graph_facts

    plain = [helper.make_node("Relu", [f"x{i}"], [f"x{i + 1}"]) for i in range(1000)]
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../outside.bin"
    constant = helper.make_node("Constant", [], ["c"], value=tensor)
    graph = helper.make_graph(plain + [constant], "g", [helper.make_tensor_value_info("x0", 1, ["batch", 4])],
                              [helper.make_tensor_value_info("x1000", 1, ["batch", 4])])
    data = helper.make_model(graph).SerializeToString()
    with field_budget(2_000):  # the 1,000 Relu nodes hold 4,000 fields
        facts = graph_facts(data)
    assert [entry["location"] for entry in facts.external] == ["../outside.bin"]
    assert facts.inputs == ("x0",) and facts.outputs == (("x1000", ("batch", 4)),)
