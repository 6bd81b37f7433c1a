"""The runtime answers from a package, exits early when confident, and stays light."""

from __future__ import annotations

from dataclasses import replace

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import InputError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run_with_onnxruntime.py"


def _example(package: Path, text: str) -> dict:
    out = subprocess.run([sys.executable, str(EXAMPLE), str(package), text], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_onnxruntime_only_example_reproduces_full_depth(tiny_packages, task):
    package = tiny_packages[("roberta", task)]
    text = "good film with a slow plot"
    result = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None)).run(text)
    example = _example(package, text)
    if task == "text-classification":
        np.testing.assert_allclose(example["probabilities"], result.probabilities, atol=1e-5)
        assert example["label"] == result.label
    else:
        np.testing.assert_allclose(example["embedding"], result.embedding, atol=1e-5)


def test_early_exit_uses_the_calibrated_thresholds(tiny_packages):
    package = tiny_packages[("bert", "text-classification")]
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95))
    level = session.level
    results = session.run(["good movie", "bad dull plot", "happy sun rain city"])
    for result in results:
        depth = result.trace.exit_after_block
        if depth < 3:
            index = [e.after_block for e in session.manifest.exits].index(depth)
            assert result.confidence >= level.thresholds[index]
        assert result.trace.segments[0] == ("stage_01_lean" if level.thresholds[0] is not None else "embed")
        assert len(result.trace.tokens_per_block) == depth


def test_stage_spans_answer_like_the_segment_chain(tiny_packages):
    """A block fused with its exit (and the last block with the head) is one call per decision;
    answers, exits and tokens must be those of the segment-by-segment chain."""
    package = tiny_packages[("bert", "text-classification")]
    policy = edgeinfer.Policy(agreement=0.95, keep_schedule=((1, 0.7),))
    staged = edgeinfer.load(package, policy=policy)
    chained = edgeinfer.load(package, policy=policy)
    chained.plan = replace(chained.plan, stages={}, last_stage=None)  # as a package without stage spans runs
    texts = ["good movie", "bad dull plot with a long and winding story", "happy sun rain city", "meh"]
    for a, b in zip(staged.run(texts), chained.run(texts)):
        assert a.trace.exit_after_block == b.trace.exit_after_block
        assert a.trace.tokens_per_block == b.trace.tokens_per_block
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        assert len(a.trace.segments) < len(b.trace.segments)
        assert any(name.startswith("stage_") for name in a.trace.segments)


def test_lean_stages_serve_runs_that_do_not_prune_there(tiny_packages):
    """A stage without token scores answers exactly as the stage with them; a policy pruning after
    a block takes the scoring stage there and the lean one elsewhere."""
    package = tiny_packages[("bert", "text-classification")]
    every_exit = edgeinfer.Policy(agreement=0.95)
    lean = edgeinfer.load(package, policy=every_exit)
    scoring = edgeinfer.load(package, policy=every_exit)
    scoring.plan = replace(scoring.plan, stages={depth: scoring.manifest.span_covering(stage.covers)
                                                 for depth, stage in lean.plan.stages.items()})
    assert lean.plan.stages and all("token_importance" not in s.outputs for s in lean.plan.stages.values())
    assert all("token_importance" in s.outputs for s in scoring.plan.stages.values())
    texts = ["good movie", "bad dull plot with a long and winding story", "happy sun rain city", "meh"]
    for a, b in zip(lean.run(texts), scoring.run(texts)):
        assert a.trace.exit_after_block == b.trace.exit_after_block
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    pruning = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, keep_schedule=((1, 0.7),)))
    assert "token_importance" in pruning.plan.stages[1].outputs
    assert all("token_importance" not in s.outputs for depth, s in pruning.plan.stages.items() if depth != 1)


def test_bad_inputs_get_one_clear_error(tiny_packages):
    session = edgeinfer.load(tiny_packages[("bert", "feature-extraction")])
    for bad, message in [("", "empty"), ("   ", "empty"), ([], "empty list"), ([3], "not a string"),
                         (None, "string or a list")]:
        with pytest.raises(InputError, match=message):
            session.run(bad)


def test_long_input_is_truncated_and_says_so(tiny_packages):
    session = edgeinfer.load(tiny_packages[("bert", "feature-extraction")])
    result = session.run("good " * 500)
    assert result.trace.truncated and result.trace.tokens_per_block[0] == 64


def test_runtime_never_imports_torch(tiny_packages):
    code = ("import sys, edgeinfer; s = edgeinfer.load(sys.argv[1]); s.run('good movie'); "
            "bad = [m for m in ('torch', 'transformers', 'edgeinfer.export') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_packages[("bert", "text-classification")])],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_run_inspect_and_one_line_errors(tiny_packages, tmp_path):
    package = str(tiny_packages[("distilbert", "text-classification")])
    cli = [sys.executable, "-m", "edgeinfer.cli"]
    run = subprocess.run(cli + ["run", package, "--text", "good movie", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["label"] in ("neg", "pos")
    inspect = subprocess.run(cli + ["inspect", package, "--json"], capture_output=True, text=True)
    assert [s["name"] for s in json.loads(inspect.stdout)["segments"]][:2] == ["embed", "block_00"]
    missing = subprocess.run(cli + ["run", str(tmp_path / "none.edge"), "--text", "x"], capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "not an edge package directory" in missing.stderr


def test_batched_full_depth_matches_one_by_one(tiny_packages):
    session = edgeinfer.load(tiny_packages[("roberta", "text-classification")], policy=edgeinfer.Policy.off())
    texts = ["good", "a long dull movie with a slow plot and a kind actor", "sad story", "rain " * 80]
    batched = session.run(texts)
    for text, result in zip(texts, batched):
        single = session.run(text)
        np.testing.assert_allclose(result.probabilities, single.probabilities, atol=1e-5)
        assert result.label == single.label and result.trace.truncated == single.trace.truncated
    with pytest.raises(InputError, match="not a string"):
        session.run(["good", 7])


WRONG_ARGUMENTS = {
    "a number for the package": (lambda p: edgeinfer.load(123), "package takes a path"),
    "a NUL byte in the package path": (lambda p: edgeinfer.load("pkg\x00x"), "NUL byte"),
    "threads as text": (lambda p: edgeinfer.load(p, threads="2"), "threads takes a whole number"),
    "threads as a bool": (lambda p: edgeinfer.load(p, threads=True), "threads takes a whole number, not bool"),
    "threads past any use": (lambda p: edgeinfer.load(p, threads=10**6), "threads 1000000 must be between 1"),
    "a policy as a dict": (lambda p: edgeinfer.load(p, policy={"agreement": 0.99}), "policy takes an edgeinfer.Policy"),
    "a budget as a number": (lambda p: edgeinfer.load(p, budget=5.0), "budget takes an edgeinfer.Budget"),
    "a profile as a number": (lambda p: edgeinfer.load(p, profile=3), "profile takes a path"),
    "a deadline of True": (lambda p: edgeinfer.Budget(latency_ms=True), "latency_ms takes a number, not bool"),
    "a deadline too big for a float": (lambda p: edgeinfer.Budget(latency_ms=10**400), "must be in (0, 1e+12]"),
    "an agreement of True": (lambda p: edgeinfer.Policy(agreement=True), "agreement takes a number, not bool"),
    "a keep schedule as text": (lambda p: edgeinfer.Policy(keep_schedule="2:0.5"), "keep_schedule takes (after_block"),
    "block True in a keep schedule": (lambda p: edgeinfer.Policy(keep_schedule=((True, 0.5),)), "keep_schedule block"),
    "block True to skip": (lambda p: edgeinfer.Policy(skip_blocks=(True,)), "skip_blocks entry takes a whole number"),
    "a lone surrogate in a text": (lambda p: edgeinfer.load(p).run("bad \udcff text"), "not valid Unicode"),
    "a text past the size cap": (lambda p: edgeinfer.load(p).run("a " * 600_000), "over the 1,000,000 limit"),
}


@pytest.mark.parametrize("case", sorted(WRONG_ARGUMENTS))
def test_a_wrong_argument_is_one_line_naming_it(tiny_packages, case):
    call, message = WRONG_ARGUMENTS[case]
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]").replace("+", r"\+")) as caught:
        call(tiny_packages[("bert", "text-classification")])
    assert "\n" not in str(caught.value)


def test_the_cli_says_one_line_for_a_closed_stdin_a_missing_key_folder_and_a_nested_profile(tiny_packages, tmp_path):
    package = str(tiny_packages[("bert", "text-classification")])
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    for argv, stdin, message in ((["run", package], subprocess.DEVNULL, "no input texts"),
                                 (["run", package, "--text", "good", "--profile", str(nested)], None,
                                  "cannot be read (RecursionError)"),
                                 (["keygen", "--out", str(tmp_path / "missing" / "key")], None, "does not exist")):
        done = subprocess.run([sys.executable, "-m", "edgeinfer.cli", *argv], stdin=stdin, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr[-500:]
    closed = subprocess.run(f"{sys.executable} -m edgeinfer.cli run {package} <&-", shell=True, capture_output=True,
                            text=True, timeout=120)
    assert closed.returncode == 2 and "standard input is closed" in closed.stderr
    piped = subprocess.run(f"yes good movie | head -2000 | {sys.executable} -m edgeinfer.cli run {package} --json | head -1",
                           shell=True, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in piped.stderr and piped.stdout.count("\n") == 1
