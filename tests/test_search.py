"""Semantic search with a stated agreement (runtime/encoder/search.py, search_gate.py): the gate's
calibration as pure functions, then an index over a tiny package with an int8 variant."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.runtime.binomial import rate_upper_bound
from edgeinfer.runtime.encoder.search_gate import choose_margin

from conftest import write_calibration


@pytest.mark.parametrize("errors,n", [(0, 10), (0, 500), (1, 500), (3, 400), (10, 1000), (5, 6), (250, 300)])
def test_rate_upper_bound_is_clopper_pearson(errors, n):
    beta = pytest.importorskip("scipy.stats").beta
    assert rate_upper_bound(errors, n) == pytest.approx(beta.ppf(0.95, errors + 1, n - errors), rel=1e-9)


def test_rate_upper_bound_edges():
    assert rate_upper_bound(0, 0) == 1.0 and rate_upper_bound(7, 7) == 1.0
    assert rate_upper_bound(0, 300) < 0.01 < rate_upper_bound(0, 298)  # why 300 texts can certify 0.99


def test_gate_accepts_every_margin_when_nothing_changes():
    margins = np.linspace(0.0, 0.1, 1000)
    gate = choose_margin(margins, np.zeros(1000, dtype=bool), agreement=0.99)
    assert gate.margin == 0.0 and gate.rescued_share == 0.0 and gate.changed == 0 and gate.bound < 0.01


def test_gate_sends_close_calls_to_the_full_model():
    rng = np.random.default_rng(0)
    margins = rng.uniform(0, 0.05, 2000)
    changed = margins < 0.01  # every close call changes its first result
    gate = choose_margin(margins, changed, agreement=0.99)
    kept = margins >= gate.margin
    assert gate.bound <= 0.01 and gate.changed == int(np.sum(changed & kept))
    assert 0.0 < gate.rescued_share < 0.25 and gate.rescued_share == pytest.approx(1 - kept.mean())
    assert not gate.passes(0.5, 0.5 - gate.margin / 2) and gate.passes(0.5, 0.5 - 1.01 * gate.margin)


def test_gate_stops_at_the_first_margin_that_fails():
    """Fixed-sequence testing: a failure among large margins ends the scan, even if smaller margins would
    bring the rate back down."""
    margins = np.array([0.9, 0.8, 0.7] + [0.01] * 997)
    changed = np.array([False, True, True] + [False] * 997)
    gate = choose_margin(margins, changed, agreement=0.995)
    assert gate.margin == 0.8 and gate.changed == 1


def test_gate_rescues_everything_when_the_sample_cannot_certify_the_level():
    gate = choose_margin(np.full(100, 0.5), np.zeros(100, dtype=bool), agreement=0.99)  # 0 of 100: bound 0.03
    assert np.isinf(gate.margin) and gate.rescued_share == 1.0 and gate.bound == 0.0
    assert not gate.passes(1.0, -1.0) and gate.to_dict()["margin"] is None


def test_ties_pass_or_fail_together():
    margins = np.array([0.5] * 400 + [0.2] * 600)
    changed = np.array([False] * 400 + [True] * 10 + [False] * 590)
    gate = choose_margin(margins, changed, agreement=0.99)
    assert gate.margin == 0.5 and gate.rescued_share == pytest.approx(0.6)


# --- an index over a tiny package ----------------------------------------------------------------


def _texts(path, n):
    return [line.split("\t")[0] for line in path.read_text().splitlines()[1:]][:n]


@pytest.fixture(scope="module")
def embedding_package(quantized_embedder):
    return quantized_embedder


@pytest.fixture(scope="module")
def corpus(tiny_calibration):
    return list(dict.fromkeys(_texts(tiny_calibration, 400)))  # the generator repeats a few short texts


def test_index_states_its_gate_and_keeps_cheap_answers_only_above_it(embedding_package, corpus, tmp_path):
    index = edgeinfer.search_index(embedding_package, corpus, agreement=0.97)
    exact = edgeinfer.search_index(embedding_package, corpus, precision="fp32")
    assert len(index) == len(corpus) and index.precision == "int8" and exact.precision == "fp32"
    gate = index.describe()["gate"]
    assert gate["sampled"] == len(corpus) and gate["bound"] <= 0.03 and 0.0 < gate["rescued_share"] < 1.0
    queries = _texts(write_calibration(tmp_path / "queries.tsv", n=40, seed=1), 40)
    rescued = 0
    for query in queries:
        hits, full = index.search(query, k=5), exact.search(query, k=5)
        assert len(hits.ids) == 5 and list(hits.scores) == sorted(hits.scores, reverse=True)
        assert np.linalg.norm(hits.embedding) == pytest.approx(1.0, abs=1e-5) and not full.rescued
        if hits.rescued:  # the full model answered: the exact index's results
            rescued += 1
            assert hits.ids == full.ids and np.allclose(hits.scores, full.scores, atol=1e-5)
        else:
            assert hits.scores[0] - hits.scores[1] >= index.gate.margin
    assert 0 < rescued < len(queries)


def test_a_corpus_text_finds_itself_first(embedding_package, corpus):
    index = edgeinfer.search_index(embedding_package, corpus[:50], precision="fp32")
    assert index.search(corpus[7], k=1).ids == (7,)


def test_a_sample_too_small_to_certify_sends_every_query_to_the_full_model(embedding_package, corpus):
    index = edgeinfer.search_index(embedding_package, corpus[:60], agreement=0.99)
    assert np.isinf(index.gate.margin) and index.gate.rescued_share == 1.0
    assert index.search("a fine movie").rescued


@pytest.mark.parametrize("call,words", [
    (lambda p, c: edgeinfer.search_index(p, c[:1]), "at least 2 texts"),
    (lambda p, c: edgeinfer.search_index(p, "one text"), "at least 2 texts"),
    (lambda p, c: edgeinfer.search_index(p, ["fine", ""]), "input 1 is empty"),
    (lambda p, c: edgeinfer.search_index(p, c[:5], agreement=1.5), "agreement"),
    (lambda p, c: edgeinfer.search_index(p, c[:5], precision="int4"), "'int4' is not in this package"),
    (lambda p, c: edgeinfer.search_index(p, c[:5], sample=0), "sample"),
    (lambda p, c: edgeinfer.search_index(p, c[:5], precision="fp32").search("x", k=6), "k 6 must be between 1 and 5"),
    (lambda p, c: edgeinfer.search_index(p, c[:5], precision="fp32").search(""), "empty"),
])
def test_bad_search_arguments_are_one_line(embedding_package, corpus, call, words):
    with pytest.raises(InputError) as caught:
        call(embedding_package, corpus)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_classifier_is_refused_for_search(tiny_packages, corpus):
    with pytest.raises(InputError, match="feature-extraction package"):
        edgeinfer.search_index(tiny_packages[("bert", "text-classification")], corpus[:5])


def test_search_command_prints_the_gate_and_ranked_results(embedding_package, corpus, tmp_path, capsys):
    from edgeinfer.cli import main

    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(corpus[:40]) + "\n", encoding="utf-8")
    assert main(["search", str(embedding_package), "--corpus", str(corpus_file), "--text", corpus[3], "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("search: the full model embeds every query: 40 sampled corpus texts cannot certify")
    assert lines[1].startswith(corpus[3]) and lines[2] == f"  1. 1.0000  {corpus[3]}" and lines[3].startswith("  2. ")
    assert main(["search", str(embedding_package), "--corpus", str(corpus_file), "--text", "x", "--json",
                 "--precision", "fp32"]) == 0
    gate, answer = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert gate["precision"] == "fp32" and len(answer["ids"]) == 3 and answer["rescued"] is False


def test_search_command_refuses_a_missing_corpus_in_one_line(embedding_package, tmp_path, capsys):
    from edgeinfer.cli import main

    assert main(["search", str(embedding_package), "--corpus", str(tmp_path / "none.txt"), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_a_decoder_is_refused_for_search(tiny_llama_package, corpus):
    with pytest.raises(InputError, match="feature-extraction package; this one is for text-generation"):
        edgeinfer.search_index(tiny_llama_package, corpus[:5])


def test_a_saved_index_opens_with_its_package_and_answers_alike(embedding_package, corpus, tmp_path):
    built = edgeinfer.search_index(embedding_package, corpus, agreement=0.97)
    built.save(tmp_path / "corpus.index")
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.index"]  # nothing half-written left beside it
    opened = edgeinfer.open_index(tmp_path / "corpus.index", embedding_package)
    assert opened.gate == built.gate and opened.precision == "int8" and np.array_equal(opened.corpus, built.corpus)
    for query in ["good film", "a slow dull plot", "the actors were great"]:
        again, first = opened.search(query, k=4), built.search(query, k=4)
        assert (again.ids, again.scores, again.rescued) == (first.ids, first.scores, first.rescued)
    exact = edgeinfer.search_index(embedding_package, corpus[:10], precision="fp32")
    exact.save(tmp_path / "exact.index")
    assert edgeinfer.open_index(tmp_path / "exact.index", embedding_package).cheap is None


@pytest.mark.parametrize("damage,error,words", [
    (lambda data: data[:-4], edgeinfer.PackageError, "bytes of embeddings"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), edgeinfer.PackageError, "fails its sha256 check"),
    (lambda data: b"PK\x03\x04" + data[4:], edgeinfer.PackageError, "not an edgeinfer search index"),
    (lambda data: data[:8] + b"\xff\xff\xff\x7f" + data[12:], edgeinfer.PackageError, "header length"),
    (lambda data: data.replace(b'"version": 1', b'"version": 9'), edgeinfer.PackageError, "version 9"),
])
def test_a_damaged_index_file_is_refused_in_one_line(embedding_package, corpus, tmp_path, damage, error, words):
    path = tmp_path / "corpus.index"
    edgeinfer.search_index(embedding_package, corpus[:10], precision="fp32").save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(error) as caught:
        edgeinfer.open_index(path, embedding_package)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_an_index_is_refused_with_another_package(embedding_package, tiny_packages, corpus, tmp_path):
    edgeinfer.search_index(embedding_package, corpus[:10], precision="fp32").save(tmp_path / "corpus.index")
    with pytest.raises(InputError, match="built with another package"):
        edgeinfer.open_index(tmp_path / "corpus.index", tiny_packages[("bert", "feature-extraction")])
    with pytest.raises(InputError, match="does not exist"):
        edgeinfer.open_index(tmp_path / "none.index", embedding_package)
