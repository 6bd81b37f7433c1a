"""Token pruning and the deadline guard, on tiny models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.runtime.pruning import keep_count, keep_tokens


def test_keep_tokens_keeps_protected_and_most_important_in_order():
    importance = np.array([0.01, 0.5, 0.02, 0.3, 0.4, 0.0])
    protected = np.array([True, False, False, False, False, True])
    assert keep_tokens(importance, protected, 4).tolist() == [0, 1, 4, 5]
    assert keep_tokens(importance, protected, 10).tolist() == list(range(6))


def test_keep_count_is_a_share_of_the_original_length():
    assert keep_count(original_tokens=20, current_tokens=20, keep_fraction=0.5, protected=2) == 10
    assert keep_count(original_tokens=20, current_tokens=8, keep_fraction=0.5, protected=2) == 8
    assert keep_count(original_tokens=4, current_tokens=4, keep_fraction=0.1, protected=2) == 3


def test_pruned_tokens_are_removed_physically(tiny_packages):
    session = edgeinfer.load(tiny_packages[("bert", "text-classification")],
                             policy=edgeinfer.Policy(agreement=None, keep_schedule=((1, 0.5),)))
    result = session.run("good movie with a long dull plot and a kind happy actor in the city")
    first, second = result.trace.tokens_per_block[:2]
    assert second == int(np.ceil(first * 0.5)) and result.trace.exit_after_block == 3


@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_pruning_alone_runs_one_graph_that_prunes_as_the_chain_does(tiny_packages, task):
    package = tiny_packages[("bert", task)]
    text = "good movie with a long dull plot and a kind happy actor in the city"
    for schedule in (((1, 0.5),), ((1, 0.7), (2, 0.4))):
        policy = edgeinfer.Policy(agreement=None, keep_schedule=schedule)
        inside = edgeinfer.load(package, policy=policy).run(text)
        assert inside.trace.segments == ("full_pruned",)
        chain = edgeinfer.load(package, policy=policy)
        chain.plan = replace(chain.plan, pruned_full=None)  # the block-by-block path the graph replaces
        chained = chain.run(text)
        assert chained.trace.segments[0] == "embed"
        assert inside.trace.tokens_per_block == chained.trace.tokens_per_block
        assert inside.trace.tokens_per_block[1] < inside.trace.tokens_per_block[0]
        got = inside.probabilities if task == "text-classification" else inside.embedding
        expected = chained.probabilities if task == "text-classification" else chained.embedding
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_keep_schedule_past_the_last_block_is_refused(tiny_packages):
    with pytest.raises(InputError, match="prune after blocks 1..2"):
        edgeinfer.load(tiny_packages[("bert", "text-classification")],
                       policy=edgeinfer.Policy(agreement=None, keep_schedule=((3, 0.5),)))


@pytest.mark.parametrize("schedule", [((2, 0.5), (1, 0.7)), ((1, 1.5),), ((0, 0.5),)])
def test_bad_keep_schedules(schedule):
    with pytest.raises(InputError):
        edgeinfer.Policy(keep_schedule=schedule)


def test_deadline_guard_answers_from_an_exit_and_says_so(tiny_packages):
    package = tiny_packages[("bert", "text-classification")]
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None),
                             budget=edgeinfer.Budget(latency_ms=1e-3))
    result = session.run("good movie")
    assert result.trace.deadline_cut
    assert result.trace.exit_after_block == 1 and result.label in ("neg", "pos")
    relaxed = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None), budget=edgeinfer.Budget(latency_ms=1e4))
    assert not relaxed.run("good movie").trace.deadline_cut


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "fast"])
def test_bad_budgets(bad):
    with pytest.raises(InputError):
        edgeinfer.Budget(latency_ms=bad)


def test_concurrent_runs_match_sequential_runs(tiny_packages):
    """8 threads x 1,000 calls on one session: every result identical to the sequential one."""
    import threading

    from conftest import WORDS

    session = edgeinfer.load(tiny_packages[("bert", "text-classification")],
                             policy=edgeinfer.Policy(agreement=0.95, keep_schedule=((1, 0.6),), restart_below=0.6))
    texts = [" ".join(WORDS[i:i + 3 + i % 7]) for i in range(24)]
    sequential = [session.run(t) for t in texts]
    mismatches: list[str] = []

    def worker(offset: int) -> None:
        for call in range(1000):
            index = (offset * 7 + call) % len(texts)
            result, expected = session.run(texts[index]), sequential[index]
            if result.trace.exit_after_block != expected.trace.exit_after_block \
                    or result.trace.restarts != expected.trace.restarts \
                    or not np.allclose(result.probabilities, expected.probabilities, atol=1e-6, rtol=0):
                mismatches.append(f"thread {offset} call {call}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_low_confidence_restarts_at_full_depth(tiny_packages):
    package = tiny_packages[("bert", "text-classification")]
    text = "good movie with a dull plot"
    full = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)
    cheap = edgeinfer.Policy(agreement=0.95, keep_schedule=((1, 0.5),))
    always = edgeinfer.load(package, policy=edgeinfer.Policy(**{**cheap.__dict__, "restart_below": 1.0})).run(text)
    assert always.trace.restarts == 1 and always.trace.segments[-1] == "full"
    np.testing.assert_allclose(always.probabilities, full.probabilities, atol=1e-6)
    never = edgeinfer.load(package, policy=edgeinfer.Policy(**{**cheap.__dict__, "restart_below": 1e-9})).run(text)
    assert never.trace.restarts == 0
    no_time = edgeinfer.load(package, policy=edgeinfer.Policy(**{**cheap.__dict__, "restart_below": 1.0}),
                             budget=edgeinfer.Budget(latency_ms=1e-3)).run(text)
    assert no_time.trace.restarts == 0  # the budget cannot cover a full-depth run


def test_memory_budget_below_the_need_is_refused_with_the_smallest_that_fits(tiny_packages, minilm_package):
    from edgeinfer.errors import BudgetError

    with pytest.raises(BudgetError) as err:
        edgeinfer.load(minilm_package, budget=edgeinfer.Budget(memory_mb=10))
    message = str(err.value)
    assert "\n" not in message and "give at least" in message
    smallest = int(message.rsplit("give at least ", 1)[1].split()[0])
    assert 85 <= smallest <= 200  # MiniLM fp32 weights are ~90 MB
    assert edgeinfer.load(minilm_package, budget=edgeinfer.Budget(memory_mb=smallest)).run("fits").embedding is not None


def test_merging_averages_the_most_similar_pairs_and_keeps_sizes():
    from edgeinfer.runtime.encoder.merging import merge_tokens

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((9, 4)).astype(np.float32)
    hidden[4] = hidden[3] * 2.0  # 3 (first set) and 4 (second set) point the same way: merged first
    bias = np.zeros(9, np.float32)
    protected = np.zeros(9, bool)
    protected[[0, 8]] = True
    merged, merged_bias, kept_protected = merge_tokens(hidden, bias, protected, keep=8)
    assert len(merged) == 8 and kept_protected.sum() == 2
    np.testing.assert_allclose(np.exp(merged_bias).sum(), 9.0, rtol=1e-6)  # every original token counted once
    row = int(np.argmax(np.exp(merged_bias)))
    np.testing.assert_allclose(merged[row], (hidden[3] + hidden[4]) / 2, rtol=1e-5)
    np.testing.assert_array_equal(merged[0], hidden[0])  # special tokens untouched
    again, again_bias, _ = merge_tokens(merged, merged_bias, kept_protected, keep=5)
    assert len(again) == 5 and abs(np.exp(again_bias).sum() - 9.0) < 1e-4


def test_session_merges_tokens_on_the_keep_schedule(tiny_packages):
    package = tiny_packages[("bert", "text-classification")]
    text = "good movie with a dull plot and a very long and winding story about nothing"
    merged = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None, keep_schedule=((1, 0.5),),
                                                              reduction="merge")).run(text)
    tokens = merged.trace.tokens_per_block
    assert tokens[1] < tokens[0] and abs(merged.probabilities.sum() - 1) < 1e-5
    same = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None, keep_schedule=((1, 1.0),),
                                                            reduction="merge")).run(text)
    full = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)
    np.testing.assert_allclose(same.probabilities, full.probabilities, atol=1e-5)
    with pytest.raises(edgeinfer.InputError, match="reduction"):
        edgeinfer.Policy(reduction="drop")


def test_skipped_blocks_do_not_run_and_bad_skips_are_refused(tiny_packages):
    package = tiny_packages[("bert", "text-classification")]
    text = "good movie with a dull plot"
    skipping = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None, skip_blocks=(2,))).run(text)
    assert "block_01" not in skipping.trace.segments and skipping.trace.tokens_per_block[1] == 0
    assert abs(skipping.probabilities.sum() - 1) < 1e-5
    full = edgeinfer.load(package, policy=edgeinfer.Policy.off()).run(text)
    assert not np.allclose(skipping.probabilities, full.probabilities)  # the block mattered
    with_exits = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, skip_blocks=(1,))).run(text)
    assert "embed" in with_exits.trace.segments and "block_00" not in with_exits.trace.segments
    for bad, message in [(dict(skip_blocks=(1, 2, 3)), "not all"), (dict(skip_blocks=(9,)), "not all"),
                         (dict(skip_blocks=(2,), keep_schedule=((2, 0.5),)), "skipped blocks")]:
        with pytest.raises(InputError, match=message):
            edgeinfer.load(package, policy=edgeinfer.Policy(agreement=None, **bad))
    with pytest.raises(InputError, match="distinct block numbers"):
        edgeinfer.Policy(skip_blocks=(2, 1))


def test_calibrate_stores_a_pareto_set_and_auto_picks_from_it(tiny_packages, tiny_calibration, tmp_path, capsys):
    from edgeinfer.cli import main
    from edgeinfer.runtime.package import open_package

    out = tmp_path / "calibrated.edge"
    assert main(["calibrate", str(tiny_packages[("bert", "text-classification")]), "--calib", str(tiny_calibration),
                 "--limit", "120", "--agreement", "0.9", "-o", str(out)]) == 0
    points = open_package(out).manifest.operating_points
    assert points and [p.relative_latency for p in points] == sorted(p.relative_latency for p in points)
    assert [p.agreement_bound for p in points] == sorted(p.agreement_bound for p in points)  # a Pareto front
    # 120 texts bound it, the bound shared among every point and skip set calibration could test
    assert points[-1].agreement == 1.0 and 0.9 < points[-1].agreement_bound < 1.0
    session = edgeinfer.load(out, policy="auto:0.9")
    holding = [p for p in points if p.agreement_bound >= 0.9]
    assert session.operating_point == min(holding, key=lambda p: p.relative_latency)
    assert abs(session.run("good movie").probabilities.sum() - 1) < 1e-5
    with pytest.raises(InputError, match="calibrate"):
        edgeinfer.load(tiny_packages[("bert", "text-classification")], policy="auto")
    with pytest.raises(InputError, match="auto:AGREEMENT"):
        edgeinfer.load(out, policy="auto:high")
    assert main(["inspect", str(out)]) == 0 and "point " in capsys.readouterr().out


def test_a_list_runs_batched_with_per_row_exits_like_one_by_one(tiny_packages):
    from conftest import WORDS

    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 14))) for _ in range(40)]
    package = tiny_packages[("bert", "text-classification")]
    depths = set()
    for policy in (edgeinfer.Policy(agreement=0.95), edgeinfer.Policy(agreement=0.99, restart_below=0.7),
                   edgeinfer.Policy(agreement=0.995, skip_blocks=(2,))):
        session = edgeinfer.load(package, policy=policy)
        batched = session.run(texts)
        single = [session.run(t) for t in texts]
        for b, s in zip(batched, single):
            np.testing.assert_allclose(b.probabilities, s.probabilities, atol=1e-5)
            assert b.trace.exit_after_block == s.trace.exit_after_block and b.trace.restarts == s.trace.restarts
            assert b.trace.segments == s.trace.segments and b.trace.tokens_per_block == s.trace.tokens_per_block
            depths.add(b.trace.exit_after_block)
    assert len(depths) > 1  # rows left the batch at different exits


def test_restart_after_an_exit_continues_from_the_kept_state(tiny_packages):
    """Without pruning, the state an exit answered from is the full model's own: a restart goes on
    from there (the remaining blocks only) and gives the full model's answer."""
    package = tiny_packages[("bert", "text-classification")]
    full = edgeinfer.load(package, policy=edgeinfer.Policy.off())
    from conftest import WORDS

    exits_only = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95))
    session = edgeinfer.load(package, policy=edgeinfer.Policy(agreement=0.95, restart_below=1.0))
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 14))) for _ in range(40)]
    resumed = 0
    for text in texts:
        result = session.run(text)
        np.testing.assert_allclose(result.probabilities, full.run(text).probabilities, atol=1e-5)
        if exits_only.run(text).trace.exit_after_block == len(session.manifest.blocks()):
            assert result.trace.restarts == 0  # the full model's own answer is not redone
            continue
        assert result.trace.restarts == 1 and "full" not in result.trace.segments
        blocks_run = [s for s in result.trace.segments if s.startswith(("block_", "stage_"))]
        assert len(blocks_run) == len(session.manifest.blocks())  # each block once: nothing recomputed
        resumed += 1
    assert resumed > 0
