"""The plan: what a policy compiles to, testable without running a graph, printed by `edgeinfer plan`,
`inspect` and `run --json`, and what the executor then walks."""

from __future__ import annotations

import json

import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import InputError
from edgeinfer.manifest import ExitThresholds, Segment
from edgeinfer.runtime.encoder.plan import compile_plan
from edgeinfer.runtime.encoder.plan_record import plan_lines, plan_record
from edgeinfer.runtime.package import open_package
from edgeinfer.runtime.policy import Budget, Policy


_stored = Segment.has_precision  # what the package holds, as onnxruntime's GraphRunner.has sees it


def _manifest(tiny_packages):
    return open_package(tiny_packages[("bert", "text-classification")]).manifest


def test_a_policy_compiles_to_a_plan_without_any_graph(tiny_packages):
    manifest = _manifest(tiny_packages)
    exits = compile_plan(manifest, Policy(agreement=0.95, precision="fp32"), Budget(), _stored)
    assert exits.mode == "adaptive" and exits.level.agreement == 0.95
    level = manifest.thresholds_for(0.95)
    assert {d: e.threshold for d, e in exits.exits.items()} == {
        e.after_block: t for e, t in zip(manifest.exits, level.thresholds) if t is not None}
    assert compile_plan(manifest, Policy.off(), Budget(), _stored).mode == "fused"
    pruned = compile_plan(manifest, Policy(agreement=None, keep_schedule=((1, 0.5),)), Budget(), _stored)
    assert pruned.mode == "pruned" and pruned.keep == {1: 0.5}
    deadline = compile_plan(manifest, Policy(agreement=0.95, precision="fp32"), Budget(latency_ms=5), _stored)
    kinds = [step["kind"] for step in plan_record(deadline)["steps"]]
    assert "deadline check" in kinds and "exit test" in kinds


def test_a_policy_the_package_cannot_run_is_refused_when_compiled(tiny_packages):
    manifest = _manifest(tiny_packages)
    blocks = manifest.model.num_blocks
    with pytest.raises(InputError, match="skip_blocks"):
        compile_plan(manifest, Policy(agreement=None, skip_blocks=tuple(range(1, blocks + 1))), Budget(), _stored)
    with pytest.raises(InputError, match="no onnxruntime graphs at precision"):
        compile_plan(manifest, Policy(agreement=None, precision="fp32"), Budget(), lambda s, p: False)


def test_the_printed_plan_names_each_threshold_and_graph(tiny_packages):
    manifest = _manifest(tiny_packages)
    plan = compile_plan(manifest, Policy(agreement=0.95, precision="fp32"), Budget(), _stored)
    record = plan_record(plan)
    text = "\n".join(plan_lines(record))
    for depth, step in plan.exits.items():
        if depth < manifest.model.num_blocks:
            assert f"after block {depth}: leave if max_prob >= {step.threshold:.4f}" in text
    graphs = [name for step in record["steps"] for name in step.get("graphs", [])]
    assert all(name in text for name in graphs)
    assert json.loads(json.dumps(record)) == record  # plain data


def test_the_executor_walks_the_plan_it_was_given(tiny_packages):
    """With no exit ever leaving, a run calls exactly the graphs the plan lists, in its order."""
    package = tiny_packages[("bert", "text-classification")]
    session = edgeinfer.load(package, policy=Policy(agreement=0.95, precision="fp32"))
    exits = len(session.manifest.exits)
    never = ExitThresholds(0.95, (1.5,) * exits, (0.0,) * exits + (1.0,), 6.0, 1.0)
    session.plan = session.plan.with_level(session.manifest, never, None, "fp32")
    listed = [name for step in session.plan_record()["steps"] for name in step.get("graphs", [])]
    assert session.run("a good movie with a dull plot").trace.segments == tuple(listed)


def test_plan_inspect_and_run_json_show_the_plan(tiny_packages, capsys):
    package = str(tiny_packages[("bert", "text-classification")])
    assert main(["plan", package, "--agreement", "0.95", "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("plan       adaptive, precision fp32") and "exit test after block" in printed
    assert main(["plan", package, "--full-depth", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "fused"
    assert main(["inspect", package]) == 0
    assert "\nplan       " in capsys.readouterr().out
    assert main(["run", package, "--agreement", "0.95", "--text", "good", "--text", "bad", "--json"]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["plan"]["level_in_force"] == 0.95 and "plan" not in second
