"""Decoder budgets and the decoder audit: first-token and tokens-per-second plans on measured costs,
and early-exit levels scored again at full depth."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import BudgetError, InputError

PROMPTS = ["good movie plot", "rain sun city river", "the team lost the match in the rain"]


# --- first-token and tokens-per-second budgets (generation_budget.py) ---------------------------

def _costs(fp32_step: float = 10.0, q8_step: float = 6.0) -> dict:
    from edgeinfer.runtime.cost_model import LinearCost
    from edgeinfer.runtime.decoder.generation_budget import PhaseCosts

    return {"fp32": PhaseCosts("fp32", LinearCost(20.0, 1.0), LinearCost(fp32_step, 0.001)),
            "q8": PhaseCosts("q8", LinearCost(25.0, 1.1), LinearCost(q8_step, 0.001))}


def _plan(first_token_ms=None, tokens_per_second=None, prompt_tokens=500):
    from edgeinfer.runtime.decoder.generation_budget import plan_generation

    return plan_generation(_costs(), ("fp32", "q8"), 12, (3, 6), prompt_tokens, 32, first_token_ms, tokens_per_second)


def test_budget_plan_is_the_gentlest_setting_that_fits():
    loose = _plan(first_token_ms=10_000, tokens_per_second=1)
    assert (loose.precision, loose.prune_prompt) == ("fp32", ())
    assert loose.predicted_first_token_ms == pytest.approx(520.0)
    # fp32 decodes ~94 tokens/s at this cache length, q8 ~150: the rate budget lowers the precision
    fast = _plan(tokens_per_second=120)
    assert (fast.precision, fast.prune_prompt) == ("q8", ()) and fast.predicted_tokens_per_second >= 120
    # the first-token budget prunes after the first exit, as little as meets it: 0.7 leaves 20 + 500 * 0.775
    tight = _plan(first_token_ms=410)
    assert (tight.precision, tight.prune_prompt) == ("fp32", ((3, 0.7),))
    assert tight.predicted_first_token_ms == pytest.approx(20 + 500 * (1 - 0.75 * 0.3)) and tight.predicted_first_token_ms <= 410
    both = _plan(first_token_ms=410, tokens_per_second=120)
    assert both.precision == "q8" and both.prune_prompt and both.predicted_first_token_ms <= 410


def test_budget_refusals_name_what_would_fit():
    from edgeinfer.runtime.decoder.generation_budget import predict

    with pytest.raises(BudgetError, match=r"no setting decodes 500 tokens/s on this device: at most [0-9.]+ \(q8, keep 30%"):
        _plan(tokens_per_second=500)
    # q8 decodes fast enough, fp32 with pruning prefills fast enough: not one setting does both
    with pytest.raises(BudgetError, match=r"no setting meets both budgets on this device: q8, keep 30% after block 3 "
                                          r"decodes 159.9 tokens/s but needs 286 ms"):
        _plan(first_token_ms=260, tokens_per_second=150)
    with pytest.raises(BudgetError) as refused:
        _plan(first_token_ms=100)
    message = str(refused.value)
    assert "\n" not in message and "a 500-token prompt needs at least 258 ms" in message
    assert "raise first_token_ms to 258" in message
    shorter = int(message.rsplit("shorten the prompt to ", 1)[1].split()[0])
    assert predict(_costs()["fp32"], shorter, 32, 12, ((3, 0.3),))[0] <= 100 < \
        predict(_costs()["fp32"], shorter + 2, 32, 12, ((3, 0.3),))[0]


def test_generate_plans_on_costs_measured_once(tiny_llama_package, monkeypatch, tmp_path):
    from edgeinfer.runtime.decoder import generation_budget

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    session = edgeinfer.load(tiny_llama_package)
    result = session.generate(PROMPTS[2], max_new_tokens=6, first_token_ms=60_000)
    assert result.trace.plan == "fp32, no pruning" and result.trace.predicted_first_token_ms > 0
    stored = list((tmp_path / "decoder-costs").glob("*.json"))
    assert len(stored) == 1 and {p["precision"] for p in json.loads(stored[0].read_text())["precisions"]} == {"fp32", "q8"}
    costs = generation_budget.device_costs(session)
    assert all(c.first_token.per_token_ms >= 0 and c.step.fixed_ms > 0 and 0 <= c.prune_efficiency <= 1
               for c in costs.values())

    def measured_again(_session):
        raise AssertionError("costs are measured once per package and device")

    monkeypatch.setattr(generation_budget, "measure_costs", measured_again)
    assert session.generate(PROMPTS[2], max_new_tokens=6, first_token_ms=60_000).token_ids == \
        session.generate(PROMPTS[2], max_new_tokens=6).token_ids
    unreachable = 0.001  # no prompt reaches its first token in a microsecond
    with pytest.raises(BudgetError, match="raise first_token_ms to"):
        session.generate(PROMPTS[2], max_new_tokens=6, first_token_ms=unreachable)
    with pytest.raises(InputError, match="use them with mode 'full' and without precision"):
        session.generate(PROMPTS[2], max_new_tokens=6, first_token_ms=60_000, precision="q8")
    with pytest.raises(InputError, match="tokens_per_second -3 must be in"):
        session.generate(PROMPTS[2], max_new_tokens=6, tokens_per_second=-3)
    assert main(["generate", str(tiny_llama_package), "--prompt", PROMPTS[0], "--max-new-tokens", "4",
                 "--first-token-ms", "60000", "--json"]) == 0


def test_decoder_audit_scores_each_new_token_against_the_full_model(tiny_llama_package, monkeypatch, tmp_path):
    """The audit's count against an independent reference: the Hugging Face model reading the same tokens."""
    import torch
    from transformers import LlamaForCausalLM

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    session = edgeinfer.load(tiny_llama_package)
    level = min(t.agreement for t in session.manifest.exit_thresholds)
    ids = session.encode(PROMPTS[2], chat=False)
    answer = session.generate(ids, max_new_tokens=12, min_new_tokens=12, mode="early-exit", agreement=level, audit=1.0)
    assert answer.trace.audited and answer.trace.level_used == level
    auditor = session._auditors[level]
    auditor.wait()
    model = LlamaForCausalLM.from_pretrained(str(tiny_llama_package.parent / "model")).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids + list(answer.token_ids[:-1])])).logits[0]
    full = logits[len(ids) - 1:].argmax(-1).numpy()
    assert auditor.state.samples == 12
    assert auditor.state.disagreements == int((full != np.array(answer.token_ids)).sum())


def test_decoder_audit_tightens_a_level_the_traffic_does_not_hold(tiny_llama_package, monkeypatch, tmp_path):
    from edgeinfer.runtime.decoder import audit as decoder_audit

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(decoder_audit, "_tally", lambda answer, full: (len(answer[1]), len(answer[1])))
    session = edgeinfer.load(tiny_llama_package)
    levels = sorted(t.agreement for t in session.manifest.exit_thresholds)
    with pytest.warns(UserWarning, match="not held on this traffic"):
        session.generate(PROMPTS[0], max_new_tokens=12, min_new_tokens=12, mode="early-exit", agreement=levels[0],
                         audit=1.0)
        session._auditors[levels[0]].wait()
    after = session.generate(PROMPTS[0], max_new_tokens=6, mode="early-exit", agreement=levels[0], audit=1.0)
    stricter = levels[1] if len(levels) > 1 else None
    assert after.trace.level_used == stricter
    if stricter is None:
        assert after.trace.mode == "full"
    with pytest.raises(InputError, match="audit checks a calibrated early-exit level"):
        session.generate(PROMPTS[0], max_new_tokens=4, audit=0.1)
    with pytest.warns(UserWarning, match="earlier audit found token agreement"):  # the state outlives the process
        edgeinfer.load(tiny_llama_package).generate(PROMPTS[0], max_new_tokens=2, mode="early-exit",
                                                    agreement=levels[0], audit=0.5)
