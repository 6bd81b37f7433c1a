"""An upper confidence bound on a rate from a count, without scipy (the runtime keeps to numpy,
onnxruntime and tokenizers).

Clopper-Pearson: the largest rate p under which seeing `errors` or fewer in `n` still has
probability at least 1 - confidence. The binomial CDF falls as p grows, so bisection finds it.
"""

from __future__ import annotations

import math


def binomial_cdf(errors: int, n: int, p: float) -> float:
    """P(X <= errors) for X ~ Binomial(n, p), summed in log space so large n cannot overflow."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if errors >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    return min(1.0, sum(math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
                        for k in range(errors + 1)))


def rate_upper_bound(errors: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson upper bound on the rate behind `errors` in `n` trials."""
    if n <= 0 or errors >= n:
        return 1.0
    if errors == 0:  # the closed form, exact
        return 1.0 - (1.0 - confidence) ** (1.0 / n)
    low, high = errors / n, 1.0
    for _ in range(60):  # 2**-60 of the unit interval: far below any figure a report prints
        middle = (low + high) / 2
        if binomial_cdf(errors, n, middle) > 1.0 - confidence:
            low = middle
        else:
            high = middle
    return high
