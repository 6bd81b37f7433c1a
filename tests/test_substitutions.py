"""Every rule by which the runtime could run something other than what was asked (docs/runtime.md,
"When the package cannot do what was asked"): each is refused in one line, or done with a
UserWarning and recorded in the trace."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.export.package_writer import rewrite_manifest
from edgeinfer.manifest import ExitThresholds, LengthThresholds
from edgeinfer.runtime.package import open_package

CLASSIFIER = ("bert", "text-classification")
TEXTS = ["good movie with a kind happy actor", "dull plot", "the city"]


def _warned(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = call()
    return value, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _with_variant_levels(source: Path, destination: Path, change) -> Path:
    """The package with its int8 variant's levels rewritten by `change` (the graphs untouched)."""
    manifest = open_package(source).manifest
    variants = tuple(replace(v, thresholds=tuple(change(level) for level in v.thresholds))
                     for v in manifest.precision_variants)
    rewrite_manifest(source, destination, replace(manifest, precision_variants=variants), force=True)
    return destination


def _no_restart(level: ExitThresholds) -> ExitThresholds:
    return replace(level, thresholds=(*level.thresholds[:-1], None), by_length=())


def _no_restart_for_long_inputs(level: ExitThresholds) -> ExitThresholds:
    answered = (*level.thresholds[:-1], 0.5)
    return replace(level, thresholds=answered, by_length=(
        LengthThresholds(max_tokens=4, thresholds=answered, examples=300),
        LengthThresholds(max_tokens=None, thresholds=(*level.thresholds[:-1], None), examples=300)))


def test_a_level_between_the_stored_ones_is_refused_or_runs_the_next_stricter(tiny_packages):
    package = tiny_packages[CLASSIFIER]
    with pytest.raises(InputError, match=r"agreement 0.97 is not a level this package calibrated \(it has 0.95, 0.98"):
        edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.97))
    session, said = _warned(lambda: edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.97, fallback="nearest")))
    assert any("agreement 0.97" in s and "running level 0.98" in s for s in said)
    trace = session.run(TEXTS[0]).trace
    assert (trace.level_requested, trace.level_used) == (0.97, 0.98)


def test_a_level_above_every_stored_one_is_refused_or_runs_the_full_model(tiny_packages):
    package = tiny_packages[CLASSIFIER]
    with pytest.raises(InputError, match="agreement 0.999 is not a level"):
        edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.999))
    session, said = _warned(lambda: edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.999, fallback="nearest")))
    assert any("running the full model (exits off)" in s for s in said)
    result = session.run(TEXTS[0])
    assert result.trace.level_requested == 0.999 and result.trace.level_used is None
    assert result.trace.exit_after_block == session.manifest.model.num_blocks


def test_a_stored_level_runs_as_asked_without_a_word(tiny_packages):
    session, said = _warned(lambda: edgeinfer.load(tiny_packages[CLASSIFIER], policy=edgeinfer.Policy(agreement=0.98)))
    assert said == []
    trace = session.run(TEXTS[0]).trace
    assert trace.level_requested == trace.level_used == 0.98
    assert trace.precision_requested == "auto" and trace.precision == "fp32"  # no variant to weigh


def test_a_variant_that_certifies_no_answer_is_refused_or_runs_fp32(quantized, tmp_path):
    package = _with_variant_levels(quantized, tmp_path / "never.edge", _no_restart)
    with pytest.raises(InputError, match="precision 'int8' certifies no answer at agreement 0.95"):
        edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, precision="int8"))
    session, said = _warned(lambda: edgeinfer.load(
        package, policy=edgeinfer.Policy(agreement=0.95, precision="int8", fallback="nearest")))
    assert any("certifies no answer" in s and "running fp32" in s for s in said)
    for result in session.run(TEXTS):
        assert result.trace.precision_requested == "int8" and result.trace.precision == "fp32"


def test_a_variant_without_the_level_is_refused(quantized, tmp_path):
    package = _with_variant_levels(quantized, tmp_path / "other.edge", lambda level: replace(level, agreement=0.9))
    with pytest.raises(InputError, match="agreement 0.95 is not a level precision 'int8' calibrated"):
        edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, precision="int8"))


def test_length_ranges_the_variant_cannot_answer_start_at_fp32_and_say_so(quantized, tmp_path):
    package = _with_variant_levels(quantized, tmp_path / "ranges.edge", _no_restart_for_long_inputs)
    session, said = _warned(lambda: edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, precision="int8")))
    assert any("for inputs of 5 or more tokens: those start at fp32" in s for s in said)
    long = session.run("a long sentence about a good movie with a kind happy actor in the city").trace
    assert long.precision_requested == "int8" and long.precision == "fp32" and long.restarts == 0


def test_a_budget_below_the_first_block_is_said_and_each_overrun_recorded(tiny_packages):
    package = tiny_packages[CLASSIFIER]
    session, said = _warned(lambda: edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95),
                                                   budget=edgeinfer.Budget(latency_ms=1e-6), profile=None))
    assert any("is below the cheapest answer this policy gives" in s for s in said)
    trace = session.run(TEXTS[0]).trace
    assert trace.over_budget
    relaxed = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95), budget=edgeinfer.Budget(latency_ms=1e4),
                             profile=None)
    assert not relaxed.run(TEXTS[0]).trace.over_budget


def test_threads_the_global_pool_overrides_are_said_and_recorded(tiny_packages):
    """In a process of its own: the global pool is process-wide and cannot be undone."""
    script = ("import warnings, edgeinfer, sys\n"
              "edgeinfer.use_global_thread_pool(1)\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    s = edgeinfer.load(sys.argv[1], policy=edgeinfer.Policy.off(), threads=2, profile=None)\n"
              "print(s.run('good movie').trace.threads, any('threads=2 is ignored' in str(w.message) for w in caught))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tiny_packages[CLASSIFIER])], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "True"]


def test_the_trace_records_the_threads_the_graphs_ran_on(tiny_packages):
    session = edgeinfer.load(tiny_packages[CLASSIFIER], policy=edgeinfer.Policy.off(), threads=1, profile=None)
    assert session.run(TEXTS[0]).trace.threads == 1


def test_an_audit_that_tightens_the_level_says_so(tiny_packages, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    session = edgeinfer.load(tiny_packages[CLASSIFIER], policy=edgeinfer.Policy(agreement=0.95, audit=1.0))
    _, said = _warned(lambda: session.auditor._tighten(0.95))
    assert any("level 0.95 is not held on this traffic" in s and "now runs at 0.98" in s for s in said)
    assert session.run(TEXTS[0]).trace.level_used == 0.98


def test_an_unknown_fallback_is_refused():
    with pytest.raises(InputError, match="fallback 'closest' must be one of refuse, nearest"):
        edgeinfer.Policy(fallback="closest")
