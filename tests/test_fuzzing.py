"""Fuzzing (hypothesis): hostile manifests, damaged graphs and hostile runtime inputs.

Only the documented error types may escape (EdgeInferError and its subclasses), and no case may
hang: each runs under a hypothesis deadline. Each target runs 10,000 examples.
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeinfer
from edgeinfer.errors import EdgeInferError, InputError, PackageError
from edgeinfer.manifest import Manifest
from edgeinfer.manifest_reading import manifest_from_json

FUZZ = settings(max_examples=5_000, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def valid_manifest(tiny_packages) -> dict:
    return json.loads((tiny_packages[("bert", "text-classification")] / "manifest.json").read_text())


def _paths(document, prefix=()):
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document[:3]):
            yield from _paths(value, prefix + (index,))


def _mutate(document, path, action, value):
    if not path:
        return value if action != "delete" else {}
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete" and isinstance(parent, dict):
        parent.pop(last, None)
    elif action == "nest":
        for _ in range(200):
            value = [value]
        parent[last] = value
    else:
        parent[last] = value
    return document


@FUZZ
@given(data=st.data())
def test_fuzzed_manifests_raise_only_package_errors(valid_manifest, data):
    document = json.loads(json.dumps(valid_manifest))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(document))
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "nest"]))
        document = _mutate(document, path, action, data.draw(json_values))
    text = json.dumps(document)
    try:
        manifest_from_json(text)
    except PackageError as err:
        assert "\n" not in str(err)


@settings(max_examples=500, deadline=timedelta(seconds=2), database=None)
@given(st.binary(max_size=300))
def test_arbitrary_manifest_bytes_raise_only_package_errors(raw):
    try:
        parsed = manifest_from_json(raw)
    except PackageError as err:
        assert "\n" not in str(err) and str(err).startswith(("manifest", "package"))
        return
    assert isinstance(parsed, Manifest)


def test_truncated_and_bit_flipped_graphs_never_crash(tiny_packages, tmp_path):
    """Checked packages refuse damage by digest; unchecked ones get onnxruntime's refusal as one line."""
    source = tiny_packages[("bert", "text-classification")]
    rng = random.Random(0)
    for case in range(30):
        package = tmp_path / f"p{case}.edge"
        shutil.copytree(source, package)
        graph = package / "graphs" / rng.choice(["embed.onnx", "block_00.onnx", "head.onnx", "full.onnx"])
        data = bytearray(graph.read_bytes())
        if case % 2:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(8):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        graph.write_bytes(bytes(data))
        with pytest.raises(PackageError):
            edgeinfer.load(package)
        try:
            session = edgeinfer.runtime.encoder.session.EdgeSession(
                edgeinfer.runtime.package.open_package(package, verify=False), edgeinfer.Policy.off())
            session.run("a short text")
        except EdgeInferError as err:
            assert "\n" not in str(err)


text_inputs = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
    st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\x00\x1b\u200b\u3000"), max_size=30),
    st.sampled_from(["a" * 100_000, "word " * 20_000, "\ud7ff" * 10, "🙂" * 500]),
    st.binary(max_size=40),
    st.lists(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.binary(max_size=5)), max_size=5),
    st.integers(), st.none(), st.floats(),
)


@pytest.fixture(scope="module")
def adaptive_session(tiny_packages):
    return edgeinfer.load(tiny_packages[("bert", "text-classification")],
                          policy=edgeinfer.Policy(agreement=0.95, keep_schedule=((1, 0.6),)))


@FUZZ
@given(value=text_inputs)
def test_fuzzed_runtime_inputs_raise_only_input_errors(adaptive_session, value):
    try:
        results = adaptive_session.run(value)
    except InputError as err:
        assert "\n" not in str(err)
        return
    for result in results if isinstance(results, list) else [results]:
        assert np.isfinite(result.probabilities).all() and abs(result.probabilities.sum() - 1) < 1e-4
