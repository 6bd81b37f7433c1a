"""The online audit: answers checked against the full model off the latency path, an anytime-valid
test of the stated level, tightening when it is not held, state that survives the process."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import InputError
from edgeinfer.manifest import ExitThresholds
from edgeinfer.runtime.audit import AuditState, evidence


def test_the_test_rarely_fires_when_the_level_holds_and_fires_when_it_does_not():
    rng = np.random.default_rng(0)
    false_alarms = 0
    for _ in range(200):  # at exactly the level's rate, checked after every one of 2,000 audits
        disagreements = np.cumsum(rng.uniform(size=2000) < 0.01)
        false_alarms += any(evidence(t + 1, int(d), 0.99) >= 20 for t, d in enumerate(disagreements))
    assert false_alarms / 200 <= 0.05
    assert evidence(1000, 30, 0.99) >= 20  # 3% against a stated 1% is caught within 1,000 audits
    state = AuditState(requested=0.99, in_force=0.99, samples=1000, disagreements=5)
    lower, upper = state.agreement_bounds()
    assert lower < 0.995 < upper and not state.level_broken()


def test_policy_refuses_audit_without_a_level_or_outside_a_share():
    with pytest.raises(InputError, match="audit checks an agreement level"):
        edgeinfer.Policy(agreement=None, audit=0.05)
    for bad in (0.0, 1.5, True, "5%"):
        with pytest.raises(InputError, match="share of requests"):
            edgeinfer.Policy(audit=bad)


def _broken_session(package):
    """A session whose level in force answers everything at the first exit: far below its level."""
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, audit=1.0))
    exits = len(session.manifest.exits)
    level = ExitThresholds(0.95, (0.0,) * exits, (1.0,) + (0.0,) * exits, 1.0, 0.0)
    session.plan = session.plan.with_level(session.manifest, level, session.restart_threshold, session.precision)
    return session


def test_a_broken_level_is_tightened_and_stays_tightened(tiny_packages, tmp_path, monkeypatch, capsys):
    from conftest import WORDS

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    package = tiny_packages[("bert", "text-classification")]
    session = _broken_session(package)
    full = edgeinfer.load(package, policy=edgeinfer.Policy.off())
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 14))) for _ in range(200)]
    wrong = 0
    for text in texts:
        result = session.run(text)
        assert result.trace.audited
        wrong += result.label != full.run(text).label
        session.auditor.wait()
        if session.auditor.state.adjustments:
            break
    assert wrong > 0
    moved = session.auditor.state.adjustments[0]
    assert moved["from"] == 0.95 and moved["to"] == 0.98 and session.level.agreement == 0.98
    assert session.run(texts[0]).trace.level_used == 0.98
    again = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, audit=0.05))
    assert again.level.agreement == 0.98  # the saved state carries over to a new session
    assert main(["audit", str(package)]) == 0
    assert "0.95 -> 0.98" in capsys.readouterr().out


def test_a_damaged_state_file_is_ignored_with_a_warning(tiny_packages, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    package = tiny_packages[("bert", "text-classification")]
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, audit=1.0))
    session.run("good movie")
    session.auditor.wait()
    path = session.auditor.path
    saved = json.loads(path.read_text())
    assert saved["samples"] == 1
    path.write_text('{"requested": 0.95, "in_force": 0.42, "samples": -3}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, audit=1.0))
    assert any("damaged" in str(w.message) for w in caught)
    assert fresh.auditor.state.samples == 0 and fresh.level.agreement == 0.95
    assert math.isclose(fresh.auditor.share, 1.0)


def test_the_audit_thread_ends_when_idle_and_starts_again(tiny_packages, tmp_path, monkeypatch):
    import time

    from edgeinfer.runtime import audit

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(audit, "IDLE_S", 0.2)
    session = edgeinfer.load(tiny_packages[("bert", "text-classification")],
                             policy=edgeinfer.Policy(agreement=0.95, audit=1.0))
    assert session.auditor._worker is None  # nothing started before a sample
    session.run("good movie")
    session.auditor.wait()
    deadline = time.monotonic() + 10
    while session.auditor._worker is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session.auditor._worker is None
    session.run("bad plot")
    session.auditor.wait()
    assert session.auditor.state.samples == 2


def test_requests_outside_the_calibration_lengths_are_counted_and_inspect_warns(tiny_packages, tmp_path, monkeypatch,
                                                                                   capsys):
    from conftest import WORDS

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    package = tiny_packages[("bert", "text-classification")]
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, audit=1.0))
    low, high = session._calibrated_lengths
    short, long_ = "good", " ".join(WORDS[:8] * 6)  # 3 tokens, and a text past the longest calibration input
    answers = [session.run(text) for text in (short, long_, "good movie with a dull plot")]
    session.auditor.wait()
    outside = [a.trace.outside_calibration for a in answers]
    assert outside == [not low <= a.trace.tokens_per_block[0] <= high for a in answers] and any(outside)
    assert session.auditor.state.requests == 3 and session.auditor.state.outside == sum(outside)
    assert main(["inspect", str(package)]) == 0
    assert f"warning    {sum(outside)} of 3 requests served here" in capsys.readouterr().out
    assert main(["audit", str(package)]) == 0
    assert f"{sum(outside)} of 3 requests had a length outside" in capsys.readouterr().out
