"""Targets, the probe's device profiles, and the runtime planning with them."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import InputError, PackageError
from edgeinfer.targets.probe import ProbePlan, consistency, probe
from edgeinfer.targets.profile import ProfileWarning, read_profile

SMALL = ProbePlan(tokens=(8, 16, 32, 64), batches=(1, 2), warmup_rounds=1, rounds=4)


@pytest.fixture(scope="module")
def probed(tiny_packages, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr("edgeinfer.targets.probe.QUICK", SMALL)
    package = tiny_packages[("bert", "text-classification")]
    out = tmp_path_factory.mktemp("profiles") / "profile.json"
    assert main(["probe", str(package), "--quick", "-o", str(out)]) == 0
    return package, out


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_targets_lists_cpu_and_says_why_others_are_missing(capsys):
    assert main(["targets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cpu = next(line for line in lines if line.startswith("cpu "))
    assert "usable" in cpu
    missing = [line for line in lines if "missing" in line]
    assert missing and all("has no" in line for line in missing)


def test_unknown_or_missing_target_is_one_line(tiny_packages):
    package = tiny_packages[("bert", "text-classification")]
    with pytest.raises(InputError, match="unknown target 'tpu'"):
        edgeinfer.load(package, target="tpu")
    with pytest.raises(InputError, match="not usable here"):
        edgeinfer.load(package, target="coreml")


def test_probe_measures_every_graph_and_fits_costs(probed):
    package, path = probed
    profile = read_profile(path)
    manifest = edgeinfer.load(package, profile=None).manifest
    names = {c.segment for c in profile.costs}
    assert names == {s.name for s in manifest.segments} - {"full_pruned"}
    for cost in profile.costs:
        assert cost.tokens == SMALL.tokens and len(cost.median_ms) == len(SMALL.tokens)
        assert all(m > 0 for m in cost.median_ms) and cost.model in ("linear", "table")
        assert all(t >= m for t, m in zip(cost.p90_ms, cost.median_ms))
    assert {c.batch for c in profile.costs} == {1, 2}
    assert profile.fingerprint["threads"] >= 1 and profile.fingerprint["cpu"]
    assert all(v["load_ms"] > 0 for v in profile.sessions.values())
    assert profile.overhead_fixed_ms >= 0 and profile.overhead_per_call_ms >= 0


def test_runtime_predicts_with_the_profile_and_says_which(probed):
    package, path = probed
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95), profile=path)
    result = session.run("good movie with a dull plot")
    assert result.trace.profile == read_profile(path).key
    assert result.trace.predicted_ms is not None and result.trace.predicted_ms > 0
    assert edgeinfer.load(package, profile=None).run("good movie").trace.predicted_ms is None
    pruning = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None, keep_schedule=((1, 0.5),)),
                             profile=path).run("good movie with a dull plot")  # priced by the blocks it runs
    assert pruning.trace.segments == ("full_pruned",) and pruning.trace.predicted_ms > 0


def test_profile_from_another_device_warns(probed, tmp_path):
    package, path = probed
    document = json.loads(path.read_text())
    document["fingerprint"]["cpu"] = "some other CPU"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(document))
    with pytest.warns(ProfileWarning, match="another device") as caught:
        session = edgeinfer.load(package, profile=other)
    assert any("cpu" in str(w.message) for w in caught)  # it names what differs
    assert session.profile is not None  # used all the same: a rough prediction beats none
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own = edgeinfer.load(package, profile=path)  # this device's own profile: silent
    assert own.profile == read_profile(path)


def test_bad_profile_is_one_line(tiny_packages, tmp_path):
    package = tiny_packages[("bert", "text-classification")]
    for content, message in [("not json", "cannot be read"), ('{"format": "x"}', "not an edgeinfer profile"),
                             ('{"format": "edgeinfer.profile"}', "malformed")]:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(PackageError, match=message):
            edgeinfer.load(package, profile=bad)
    with pytest.raises(PackageError, match="cannot be read") as refused:  # a path of control characters
        edgeinfer.load(package, profile="\n")
    assert "\n" not in str(refused.value)


def test_deadline_guard_plans_with_the_profile(probed):
    package, path = probed
    profile = read_profile(path)
    block = profile.predict_ms("block_00", "fp32", 16)
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None), profile=path,
                             budget=edgeinfer.Budget(latency_ms=0.001))
    assert session.costs is None  # nothing timed at load: the profile plans
    result = session.run("good movie with a dull plot")
    assert result.trace.deadline_cut and result.trace.exit_after_block < session.manifest.model.num_blocks
    assert block > 0


def test_two_profiles_compare_per_segment(probed):
    _, path = probed
    profile = read_profile(path)
    slower = dataclasses.replace(profile, costs=tuple(
        dataclasses.replace(c, median_ms=tuple(m * 1.2 for m in c.median_ms)) for c in profile.costs))
    rows = consistency(profile, slower)
    assert rows and all(abs(r["max_relative_difference"] - 0.2) < 1e-3 for r in rows)


def test_probe_refuses_an_unusable_target(tiny_packages):
    with pytest.raises(InputError, match="not usable here"):
        probe(tiny_packages[("bert", "text-classification")], target="cuda")
