"""The real SmolLM2-135M package: exported once per test run (a few minutes), checked end to end."""

from __future__ import annotations

import pytest

import edgeinfer
from edgeinfer.errors import BudgetError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm(smollm2_package):
    return edgeinfer.load(smollm2_package)


def test_export_generates_what_pytorch_generates(lm):
    validation = lm.manifest.validation
    assert [p["identical_tokens"] for p in validation["prompts"]] == [64, 64, 64]
    assert lm.num_blocks == 30 and lm.facts.num_kv_heads == 3
    assert lm.manifest.precision_variant("q8").quality["next_token_agreement_with_fp32"] >= 0.9


def test_chat_answer_and_streaming(lm):
    pieces: list[str] = []
    answer = lm.generate("What is the capital of France?", max_new_tokens=24, on_text=pieces.append)
    assert "Paris" in answer.text and answer.trace.stopped == "eos"
    assert "".join(pieces) == answer.text


def test_speculative_with_q8_draft_is_identical(lm):
    prompt = "Summarize: the city council voted to build a new bridge over the river next year."
    full = lm.generate(prompt, max_new_tokens=32, min_new_tokens=32)
    fast = lm.generate(prompt, max_new_tokens=32, min_new_tokens=32, mode="speculative", draft_precision="q8")
    assert fast.token_ids == full.token_ids
    assert fast.trace.accepted / fast.trace.drafted > 0.6


def test_the_head_screen_keeps_fp32_greedy_tokens(lm, smollm2_package):
    """SmolLM2's head is tied to its embedding: the q8 screen rescores rows of the mapped table."""
    assert lm.screens_head and lm.facts.head_screen.weight_file == lm.facts.embedding_file
    plain = edgeinfer.load(smollm2_package)
    plain._screen = None
    prompt = "Summarize: the museum reopened after a year of repairs, with a new wing for modern art."
    screened = lm.generate(prompt, max_new_tokens=32, min_new_tokens=32)
    assert screened.token_ids == plain.generate(prompt, max_new_tokens=32, min_new_tokens=32).token_ids


def test_kv_cap(smollm2_package):
    capped = edgeinfer.load(smollm2_package, budget=edgeinfer.Budget(memory_mb=2))
    with pytest.raises(BudgetError, match="raise the cap to"):
        capped.generate("Tell me a long story.", max_new_tokens=200)
