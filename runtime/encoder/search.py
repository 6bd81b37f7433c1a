"""Semantic search with a stated agreement: the corpus embedded by the full model, each query by the
package's cheap precision first, and again by the full model only when its first two results are too
close to call (search_gate.py).

A search user judges an embedding by the results it finds, so the agreement an index states is the
share of queries whose first result is the one the full model would have found in this corpus,
calibrated on this corpus when the index is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InputError, PackageError
from ...manifest import Manifest
from ...progress import progress_bar
from ...targets.profile import manifest_digest
from .. import arguments
from ..package import open_package
from ..policy import Policy
from ..tokenize import check_texts
from .search_file import read_index_file, write_index_file
from .search_gate import MarginGate, choose_margin
from .session import EdgeSession

SAMPLE = 2000  # corpus texts the gate is calibrated on: at 0.99, 300 can certify it and 2,000 rescue far fewer
CORPUS_BATCH = 32


@dataclass(frozen=True)
class Hits:
    """ids: corpus positions, best first; scores: their cosines to the query; rescued: the cheap
    embedding's first two results were too close to call, so the full model embedded the query;
    embedding: the query embedding that ranked the corpus (unit length)."""

    ids: tuple[int, ...]
    scores: tuple[float, ...]
    rescued: bool
    embedding: np.ndarray


class SearchIndex:
    """Build one with search_index(); search(query, k) returns Hits."""

    def __init__(self, full: EdgeSession, cheap: EdgeSession | None, corpus: np.ndarray, gate: MarginGate):
        self.full, self.cheap, self.corpus, self.gate = full, cheap, corpus, gate
        self.precision = cheap.precision if cheap is not None else "fp32"

    def __len__(self) -> int:
        return len(self.corpus)

    def search(self, query: str, k: int = 10) -> Hits:
        check_texts([query])  # the query's fault is named before k's
        arguments.whole("k", k, 1, len(self.corpus))
        if self.cheap is not None and not np.isinf(self.gate.margin):
            embedding = _unit(self.cheap.run(query).embedding)
            ids, scores = _top(_scores(self.corpus, embedding), max(k, 2))
            if self.gate.passes(scores[0], scores[1] if len(scores) > 1 else -1.0):
                return Hits(tuple(ids[:k].tolist()), tuple(scores[:k].tolist()), False, embedding)
        embedding = _unit(self.full.run(query).embedding)
        ids, scores = _top(_scores(self.corpus, embedding), k)
        return Hits(tuple(ids.tolist()), tuple(scores.tolist()), self.cheap is not None, embedding)

    def describe(self) -> dict:
        return {"texts": len(self.corpus), "precision": self.precision, "gate": self.gate.to_dict()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """One file holding the corpus embeddings and the gate (search_file.py), for open_index()
        here or openIndex() in the TypeScript runtime, with the same package."""
        write_index_file(arguments.path("path", path), self.corpus, self.gate, self.precision,
                         manifest_digest(self.full.package.root))


def search_index(package: str | os.PathLike[str], corpus: list[str], agreement: float = 0.99,
                 precision: str = "auto", sample: int = SAMPLE, threads: int | None = None) -> SearchIndex:
    """Embed `corpus` with the package's full model and calibrate when the cheap precision may answer.

    precision: the variant that embeds queries first ("auto": the package's first precision variant;
    "fp32": no cascade, every query at full precision). sample: corpus texts the gate is calibrated
    on (each embedded both ways, one at a time, as queries are). The index refuses nothing for a
    small corpus: when the sample cannot certify the agreement, every query runs at full precision
    and index.gate says so (margin inf)."""
    if not isinstance(corpus, (list, tuple)) or len(corpus) < 2:
        raise InputError("search_index needs a corpus of at least 2 texts (a list of strings)")
    check_texts(list(corpus))
    arguments.real("agreement", agreement, 0.5, 1.0)
    arguments.whole("sample", sample, 1, 1_000_000)
    root = arguments.path("package", package)
    variants = [v.name for v in _embedding_manifest(root, "search_index").precision_variants]
    chosen = (variants[0] if variants else "fp32") if precision == "auto" else precision
    if chosen != "fp32" and chosen not in variants:
        raise InputError(f"precision {chosen!r} is not in this package; it has {', '.join(['fp32', *variants])}")
    full, cheap = _sessions(root, chosen, threads)
    embedded = _embed_corpus(full, list(corpus))
    if cheap is None:
        return SearchIndex(full, None, embedded, MarginGate(agreement, np.inf, 0, 1.0, 0, 0.0))
    return SearchIndex(full, cheap, embedded, _calibrate(cheap, list(corpus), embedded, agreement, sample))


def open_index(path: str | os.PathLike[str], package: str | os.PathLike[str], threads: int | None = None) -> SearchIndex:
    """An index saved by SearchIndex.save(), searched with the package it was built with (refused
    with one line for any other, or for a damaged file)."""
    root = arguments.path("package", package)
    manifest = _embedding_manifest(root, "open_index")
    dimension = manifest.model.embedding_dim or manifest.model.hidden_size
    corpus, gate, precision = read_index_file(arguments.path("path", path), manifest_digest(root), dimension)
    if precision != "fp32" and precision not in [v.name for v in manifest.precision_variants]:
        raise PackageError(f"{path} embeds queries with {precision!r}, which the package does not hold; rebuild the index")
    return SearchIndex(*_sessions(root, precision, threads), corpus, gate)


def _embedding_manifest(root: Path, caller: str) -> Manifest:
    manifest = open_package(root).manifest
    if manifest.model.task != "feature-extraction":
        raise InputError(f"{caller} needs a feature-extraction package; this one is for {manifest.model.task}")
    return manifest


def _sessions(root: Path, precision: str, threads: int | None) -> tuple[EdgeSession, EdgeSession | None]:
    """The full model, and the session at `precision` that embeds queries first (None for fp32)."""
    from ..load import load

    full = load(root, policy=Policy(agreement=None, precision="fp32"), threads=threads)
    if precision == "fp32":
        return full, None
    return full, load(root, policy=Policy(agreement=None, precision=precision), threads=threads)


def _embed_corpus(full: EdgeSession, texts: list[str]) -> np.ndarray:
    rows = []
    with progress_bar(len(texts), "embedding the corpus") as bar:
        for start in range(0, len(texts), CORPUS_BATCH):
            chunk = texts[start:start + CORPUS_BATCH]
            rows.extend(result.embedding for result in full.run(chunk))
            bar.update(len(chunk))
    return _unit(np.stack(rows).astype(np.float32))


def _calibrate(cheap: EdgeSession, texts: list[str], corpus: np.ndarray, agreement: float, sample: int) -> MarginGate:
    """Sampled corpus texts as queries, own row left out: the cheap margin, and whether the cheap first
    result differs from the full model's."""
    picked = np.unique(np.linspace(0, len(texts) - 1, min(sample, len(texts))).round().astype(int))
    margins, changed = np.zeros(len(picked)), np.zeros(len(picked), dtype=bool)
    with progress_bar(len(picked), "calibrating the search gate") as bar:
        for row, i in enumerate(picked):
            scores = _scores(corpus, _unit(cheap.run(texts[i]).embedding))
            scores[i] = -np.inf
            reference = _scores(corpus, corpus[i])
            reference[i] = -np.inf
            ids, top = _top(scores, 2)
            second = top[1] if len(top) > 1 and np.isfinite(top[1]) else -1.0  # a corpus of two: one candidate
            margins[row] = top[0] - second
            changed[row] = ids[0] != int(np.argmax(reference))
            bar.update(1)
    return choose_margin(margins, changed, agreement)


def _scores(corpus: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosines of a unit query to every corpus row. Not `corpus @ query`: numpy hands that to OpenBLAS,
    whose threads keep spinning after the call and took the cores from the onnxruntime run that
    followed (searches over 2,000 texts took 14.0 ms against 7.6 over 200 here); einsum stays on the
    calling thread (0.15 ms for 2,000 x 384)."""
    return np.einsum("ij,j->i", corpus, query.astype(corpus.dtype, copy=False))


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best ids and scores, best first (argpartition: a full sort of a large corpus is waste)."""
    k = min(k, len(scores))
    ids = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    ids = ids[np.argsort(-scores[ids], kind="stable")]
    return ids, scores[ids]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)
