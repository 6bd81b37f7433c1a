"""The decoder runtime: the package's graphs and block routes (graphs.py), generation (generation.py)
and its decoding loop (decoding.py), with drafts, the KV cache, sampling, budgets and the audit."""
