"""Fuzzing (hypothesis): hostile manifests, damaged graphs and hostile runtime inputs.

Only the documented error types may escape (EdgeInferError and its subclasses), and no case may
hang: each runs under a hypothesis deadline.
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

# any text, lone surrogates (a JSON \udXXX escape) included, and integers past what a float holds
any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([10**400, -(10**400)])
    | st.floats(allow_nan=False, allow_infinity=False) | any_text,
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


def test_a_made_up_key_with_a_newline_is_quoted_in_the_one_line_refusal(valid_manifest):
    """Found by the fuzzer above: a damaged guarantee keyed by "x\\n" once broke the message in two."""
    document = json.loads(json.dumps(valid_manifest))
    document.setdefault("calibration", {}).setdefault("thresholds", {})["guarantee"] = {"x\n": None}
    with pytest.raises(PackageError) as caught:
        manifest_from_json(json.dumps(document))
    assert "\n" not in str(caught.value) and "'x\\n'" in str(caught.value)


@pytest.fixture(scope="module")
def package_to_mutate(tiny_packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("mutated") / "p.edge"
    shutil.copytree(tiny_packages[("bert", "text-classification")], root)
    return root


@settings(max_examples=1_000, deadline=timedelta(seconds=5), database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_manifests_load_run_and_describe_or_refuse_in_one_line(valid_manifest, package_to_mutate, data):
    """What parses must also load, run and be described, or be refused at load in one line: a value
    the parser let through must not fail later, deep inside the runtime."""
    from edgeinfer.cli.package_text import summary_text
    from edgeinfer.runtime.describe import describe_package
    from edgeinfer.runtime.package import open_package

    document = json.loads(json.dumps(valid_manifest))
    path = data.draw(st.sampled_from(list(_paths(document))[1:]))
    document = _mutate(document, path, data.draw(st.sampled_from(["replace", "delete"])), data.draw(json_values))
    (package_to_mutate / "manifest.json").write_text(json.dumps(document), encoding="utf-8", errors="surrogatepass")
    try:
        session = edgeinfer.load(package_to_mutate, optimized_cache=False)
        session.run(["a good movie", "dull " * 100])
        summary_text(describe_package(open_package(package_to_mutate)))
    except EdgeInferError as err:
        assert "\n" not in str(err) and str(err)


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


argument_values = st.one_of(json_values, st.binary(max_size=5), st.just(float("nan")), st.just(float("inf")),
                            st.just(object()), st.just("a\x00b"))


@FUZZ
@given(name=st.sampled_from(["agreement", "keep_schedule", "importance", "restart_below", "reduction", "skip_blocks",
                             "audit", "precision", "fallback", "latency_ms", "memory_mb", "threads", "target",
                             "profile", "verify_key", "policy", "budget"]), value=argument_values)
def test_fuzzed_public_arguments_raise_only_edgeinfer_errors(tiny_packages, name, value):
    """Policy, Budget and load() take what their signatures say; anything else is one line naming it."""
    import dataclasses

    package = tiny_packages[("bert", "text-classification")]
    policy_fields = {f.name for f in dataclasses.fields(edgeinfer.Policy)}
    budget_fields = {f.name for f in dataclasses.fields(edgeinfer.Budget)}
    try:
        if name in policy_fields:
            edgeinfer.load(package, policy=edgeinfer.Policy(**{name: value}), optimized_cache=False).run("a good movie")
        elif name in budget_fields:
            edgeinfer.load(package, budget=edgeinfer.Budget(**{name: value}), optimized_cache=False).run("a good movie")
        else:
            edgeinfer.load(package, optimized_cache=False, **{name: value}).run("a good movie")
    except EdgeInferError as err:
        assert "\n" not in str(err) and str(err)


@settings(max_examples=1_000, deadline=timedelta(seconds=5), database=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["max_new_tokens", "stop", "on_text", "chat", "mode", "draft_blocks", "draft_tokens",
                             "draft_precision", "draft_confidence", "draft_ngram", "precision", "restart_below",
                             "prune_prompt", "prune_to_fit", "exit_threshold", "agreement", "budget_ms",
                             "min_new_tokens", "first_token_ms", "tokens_per_second", "audit", "prompt",
                             "temperature", "top_k", "top_p", "seed"]), value=argument_values)
def test_fuzzed_generate_arguments_raise_only_edgeinfer_errors(llama_session, name, value):
    from edgeinfer.runtime.decoder.sampling import Sampling

    try:
        if name in ("temperature", "top_k", "top_p", "seed"):
            llama_session.generate("good movie", max_new_tokens=2, sampling=Sampling(**{name: value}))
        elif name == "prompt":
            llama_session.generate(value, max_new_tokens=2)
        else:
            llama_session.generate("good movie", **{"max_new_tokens": 2, name: value})
    except EdgeInferError as err:
        assert "\n" not in str(err) and str(err)


@pytest.fixture(scope="module")
def llama_session(tiny_llama_package):
    return edgeinfer.load(tiny_llama_package)


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
