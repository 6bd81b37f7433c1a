"""When may a cheap query embedding answer a search? When its first result leads the second by a
margin that the cheap precision's error cannot close.

Measured on all-MiniLM-L6-v2 with AG News (bench/RESULTS-archive.md): the int8 variant alone keeps
the full model's top-1 neighbour for 0.94 of queries, while a query embedding's cosine to the full
model's (0.996 on average) says almost nothing about which queries change. The gap between the first
and second score does: int8's error moves each score by a few thousandths, so a query whose first
result leads by 0.01 keeps it. Early exits' cosine confidence could not make this call for search.

The gate is calibrated on the corpus itself: sampled corpus texts, each in turn the query with its
own row left out, embedded both ways. The margin chosen is the smallest that keeps a 95% upper bound
on the share of changed top-1 answers within 1 - agreement, testing margins from the largest down
and stopping at the first that fails (fixed-sequence testing, so the scan costs no confidence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..binomial import rate_upper_bound

CONFIDENCE = 0.95  # what the stated agreement holds with, as for the package's exit levels


@dataclass(frozen=True)
class MarginGate:
    """agreement: the share of queries whose first result is the full model's, stated with 95%
    confidence. margin: the cheap answer stands when its first score leads the second by at least
    this (inf: every query runs at full precision). sampled: corpus texts the margin was chosen on;
    rescued_share: the share of them the gate sent to the full model; changed: how many of those it
    let the cheap answer keep had another first result; bound: the 95% upper bound on the share of
    changed answers, from changed and sampled."""

    agreement: float
    margin: float
    sampled: int
    rescued_share: float
    changed: int
    bound: float

    def passes(self, first: float, second: float) -> bool:
        return first - second >= self.margin

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "margin": None if np.isinf(self.margin) else round(self.margin, 6),
                "sampled": self.sampled, "rescued_share": round(self.rescued_share, 4), "changed": self.changed,
                "bound": round(self.bound, 6)}


def choose_margin(margins: np.ndarray, changed: np.ndarray, agreement: float,
                  confidence: float = CONFIDENCE) -> MarginGate:
    """The smallest margin whose gate keeps the bound on changed first results within 1 - agreement.

    margins: each sampled query's cheap first-minus-second score; changed: whether its cheap first
    result differs from the full model's. A query below the margin is answered by the full model,
    so it never counts as changed."""
    n = len(margins)
    allowed = 1.0 - agreement
    order = np.argsort(-margins, kind="stable")
    margin, kept_changed, bound = np.inf, 0, 0.0  # until a margin passes, every query runs at full precision
    changed_so_far = 0
    i = 0
    while i < n:
        j = i  # queries tied on a margin pass or fail together
        while j < n and margins[order[j]] == margins[order[i]]:
            changed_so_far += int(changed[order[j]])
            j += 1
        candidate = rate_upper_bound(changed_so_far, n, confidence)
        if candidate > allowed:
            break
        margin, kept_changed, bound = float(margins[order[i]]), changed_so_far, candidate
        i = j
    accepted = int(np.sum(margins >= margin))
    return MarginGate(agreement, margin, n, 1.0 - accepted / n if n else 1.0, kept_changed, bound)
