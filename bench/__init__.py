"""Benchmarks and reports: the runtime beside plain baselines, measured in the same run."""
