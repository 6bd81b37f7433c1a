"""Embedding quality as a search user sees it: does a query still find the same neighbours?

A cosine to the full model's embedding says little about search: with all-MiniLM-L6-v2 on AG News,
a query embedding at cosine 0.995 to the full model's changed its nearest neighbour in a 2,000-text
corpus for 9% of queries (the median gap between the first and second neighbour is 0.03). So the
bench also reports retrieval agreement: each input in turn is the query, embedded by the
configuration, and the others are the corpus, embedded by the full model.
"""

from __future__ import annotations

import numpy as np


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def neighbours(queries: np.ndarray, corpus: np.ndarray, k: int, own: np.ndarray | None = None) -> np.ndarray:
    """[n, k] indices of each query's k nearest corpus rows by cosine, leaving out the query's own row
    (`own[i]`, by default i)."""
    similarity = unit_rows(queries) @ unit_rows(corpus).T
    own = np.arange(len(queries)) if own is None else own
    similarity[np.arange(len(queries)), own] = -np.inf
    return _nearest(similarity, k)


def _nearest(similarity: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def _same_results(want: np.ndarray, got: np.ndarray, k: int) -> tuple[float, float]:
    """Share of queries with the same first result, and mean overlap of the top-k lists."""
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got)])
    return float((want[:, 0] == got[:, 0]).mean()), float(overlap)


def retrieval_agreement(candidate: np.ndarray, reference: np.ndarray, k: int = 10) -> dict[str, float]:
    """Share of queries whose nearest neighbour is the full model's, and the mean overlap of the top-k
    lists (recall@k of the full model's top k), with the corpus embedded by the full model."""
    k = min(k, len(reference) - 1)
    if k < 1:
        return {}
    top1, overlap = _same_results(neighbours(reference, reference, k), neighbours(candidate, reference, k), k)
    return {"retrieval_top1_agreement": round(top1, 4), f"retrieval_top{k}_overlap": round(overlap, 4),
            "retrieval_corpus": len(reference) - 1}


def search_agreement(queries: np.ndarray, reference_queries: np.ndarray, corpus: np.ndarray, k: int = 10
                     ) -> dict[str, float]:
    """The same against a corpus of its own (embedded by the full model): share of queries whose top-1
    corpus neighbour is the full model's, mean recall@k of its top k, and the queries' mean cosine."""
    corpus = unit_rows(corpus)
    top1, recall = _same_results(_nearest(unit_rows(reference_queries) @ corpus.T, k),
                                 _nearest(unit_rows(queries) @ corpus.T, k), k)
    cosine = np.sum(unit_rows(queries) * unit_rows(reference_queries), axis=1)
    return {"top1_agreement": round(top1, 4), f"recall_at_{k}": round(recall, 4),
            "mean_cosine_to_fp32": round(float(cosine.mean()), 6)}


def search_example(texts: list[str], candidate: np.ndarray, reference: np.ndarray, query: int = 0,
                   top: int = 3) -> dict[str, list[str]]:
    """The top results for one query, by the full model and by the candidate."""
    top = min(top, len(texts) - 1)
    own = np.array([query])
    want = neighbours(reference[query:query + 1], reference, top, own)[0]
    got = neighbours(candidate[query:query + 1], reference, top, own)[0]
    return {"query": [texts[query]], "full model": [texts[i] for i in want], "candidate": [texts[i] for i in got]}
