"""Decoder packages: export validation, generation modes that must match full-depth greedy decoding,
sampling, stop strings, streaming, the KV-cache cap and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import BudgetError, InputError
from edgeinfer.runtime.decoder.kv_cache import KVCache
from edgeinfer.runtime.decoder.sampling import Sampling, choose_token, top2_margin

PROMPTS = ["good movie plot", "rain sun city river", "the team lost the match in the rain"]


@pytest.fixture(scope="module")
def session(tiny_llama_package):
    return edgeinfer.load(tiny_llama_package)


def test_export_records_identical_greedy_generation(tiny_llama_package, session):
    assert [t.agreement for t in session.manifest.exit_thresholds] == [0.9, 0.95, 0.99]
    assert session.manifest.calibration["positions"] > 0
    validation = session.manifest.validation
    assert [p["identical_tokens"] for p in validation["prompts"]] == [24, 24, 24]


def test_greedy_generation_matches_transformers_generate(tiny_llama_package, session):
    """Against an independent reference: the Hugging Face model's own greedy `generate`."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(tiny_llama_package.parent / "model")).eval()
    ids = session.encode("the city", chat=False)
    with torch.no_grad():
        reference = model.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                   pad_token_id=0)
    got = session.generate(ids, max_new_tokens=16, min_new_tokens=16).token_ids
    assert list(got) == [int(t) for t in reference[0, len(ids):]]


def test_validation_records_keys_and_values(session):
    validation = session.manifest.validation
    assert validation["kv_max_abs_diff"] < 1e-4
    assert session.manifest.decoder.prompt_prefix == "<user> "
    assert session.manifest.decoder.eos_ids == (1,)


def test_greedy_generation_equals_transformers(tiny_llama_package, session):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_package.parent / "model")).eval()
    for prompt in PROMPTS:
        ids = session.encode(prompt)
        with torch.no_grad():
            expected = model.generate(torch.tensor([ids]), max_new_tokens=30, min_new_tokens=30, do_sample=False,
                                      pad_token_id=0)
        got = session.generate(prompt, max_new_tokens=30, min_new_tokens=30)
        assert list(got.token_ids) == [int(t) for t in expected[0, len(ids):]]
        assert len(set(got.token_ids)) > 3  # a varied continuation, so the modes below cannot agree trivially


@pytest.mark.parametrize("draft_blocks,draft_tokens", [(1, 1), (2, 3), (3, 5)])
def test_speculative_decoding_is_exact(session, draft_blocks, draft_tokens):
    for prompt in PROMPTS:
        full = session.generate(prompt, max_new_tokens=40, min_new_tokens=40)
        fast = session.generate(prompt, max_new_tokens=40, min_new_tokens=40, mode="speculative",
                                draft_blocks=draft_blocks, draft_tokens=draft_tokens)
        assert fast.token_ids == full.token_ids
        assert fast.trace.drafted > 0 and 0 <= fast.trace.accepted <= fast.trace.drafted


def test_q8_draft_is_exact_and_mostly_accepted(session):
    quality = session.manifest.precision_variant("q8").quality
    assert quality["next_token_agreement_with_fp32"] > 0.8
    accepted = drafted = 0
    for prompt in PROMPTS:
        full = session.generate(prompt, max_new_tokens=40, min_new_tokens=40)
        fast = session.generate(prompt, max_new_tokens=40, min_new_tokens=40, mode="speculative",
                                draft_precision="q8", draft_tokens=4)
        assert fast.token_ids == full.token_ids
        accepted, drafted = accepted + fast.trace.accepted, drafted + fast.trace.drafted
    assert accepted / drafted > 0.5


def test_early_exit_extremes(session):
    prompt = PROMPTS[0]
    full = session.generate(prompt, max_new_tokens=20, min_new_tokens=20)
    never = session.generate(prompt, max_new_tokens=20, min_new_tokens=20, mode="early-exit", exit_threshold=1.01)
    assert never.token_ids == full.token_ids
    assert set(never.trace.exit_blocks) == {session.num_blocks}
    always = session.generate(prompt, max_new_tokens=20, min_new_tokens=20, mode="early-exit", exit_threshold=0.0)
    assert set(always.trace.exit_blocks) == {session.exits[0]}
    assert always.trace.new_tokens == 20
    calibrated = session.generate(prompt, max_new_tokens=20, mode="early-exit", agreement=0.9)
    assert len(calibrated.trace.exit_blocks) == calibrated.trace.new_tokens - 1  # the first comes from the prefill
    with pytest.raises(InputError, match="no exit thresholds for agreement"):
        session.generate(prompt, mode="early-exit", agreement=0.999)


def test_sampling_is_seeded_and_respects_top_k():
    logits = np.array([5.0, 4.0, 3.0, -1.0, -2.0])
    picks = [choose_token(logits, Sampling(temperature=1.0, top_k=2, seed=1), np.random.default_rng(s))
             for s in range(200)]
    assert set(picks) == {0, 1}
    nucleus = [choose_token(logits, Sampling(temperature=1.0, top_p=0.5), np.random.default_rng(s)) for s in range(50)]
    assert set(nucleus) == {0}
    assert top2_margin(np.array([10.0, 0.0, 0.0])) > 0.99
    assert top2_margin(np.array([1.0, 1.0, 0.0])) == pytest.approx(0.0)


def test_sampled_generation_repeats_with_a_seed(session):
    first = session.generate(PROMPTS[1], max_new_tokens=16, sampling=Sampling(temperature=1.0, top_p=0.9, seed=7))
    again = session.generate(PROMPTS[1], max_new_tokens=16, sampling=Sampling(temperature=1.0, top_p=0.9, seed=7))
    assert first.token_ids == again.token_ids
    assert len(first.log_probs) == len(first.token_ids) and first.min_log_prob <= first.mean_log_prob <= 0


def test_stop_strings_and_streaming(session):
    full = session.generate(PROMPTS[2], max_new_tokens=30, min_new_tokens=30)
    words = full.text.split()
    stop = words[min(3, len(words) - 1)]
    pieces: list[str] = []
    cut = session.generate(PROMPTS[2], max_new_tokens=30, min_new_tokens=30, stop=(stop,), on_text=pieces.append)
    assert cut.trace.stopped == "stop"
    assert stop not in cut.text and full.text.startswith(cut.text)
    assert "".join(pieces) == cut.text
    streamed: list[str] = []
    whole = session.generate(PROMPTS[2], max_new_tokens=30, min_new_tokens=30, on_text=streamed.append)
    assert "".join(streamed) == whole.text == full.text


def test_kv_cap_refuses_with_the_cap_that_fits(tiny_llama_package):
    capped = edgeinfer.load(tiny_llama_package, budget=edgeinfer.Budget(memory_mb=0.01))
    per_token = capped.facts.kv_bytes_per_token
    with pytest.raises(BudgetError, match="raise the cap to") as refused:
        capped.generate(PROMPTS[0], max_new_tokens=200)
    assert "tokens need" in str(refused.value) and "\n" not in str(refused.value)
    fits = int(0.01 * 2**20 // per_token)
    prompt_tokens = len(capped.encode(PROMPTS[0]))
    result = capped.generate(PROMPTS[0], max_new_tokens=fits - prompt_tokens)
    assert result.trace.kv_bytes <= 0.01 * 2**20


def test_bad_generation_input(session):
    with pytest.raises(InputError, match="empty"):
        session.generate("   ")
    with pytest.raises(InputError, match="greedy"):
        session.generate(PROMPTS[0], mode="speculative", sampling=Sampling(temperature=0.7))
    with pytest.raises(InputError, match="positions"):
        session.generate(PROMPTS[0], max_new_tokens=10_000)
    with pytest.raises(InputError, match="draft precision"):
        session.generate(PROMPTS[0], mode="speculative", draft_precision="int4")
    with pytest.raises(InputError, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)


def test_kv_cache_blocks_may_hold_different_tokens():
    cache = KVCache(2)
    cache.store(0, np.arange(10, dtype=np.float32).reshape(1, 1, 5, 2), np.ones((1, 1, 5, 2), np.float32), np.arange(5))
    cache.store(1, np.arange(6, dtype=np.float32).reshape(1, 1, 3, 2), np.ones((1, 1, 3, 2), np.float32),
                np.array([0, 2, 4]))  # a pruned prompt: the deeper block kept three of five tokens
    assert cache.next_position() == 5 and cache.uniform_from(0) == [1]
    cache.roll_back(3)
    assert cache.length(0) == 3 and cache.length(1) == 2
    assert cache.keys[1][0, 0, :, 0].tolist() == [0, 2] and list(cache.positions[1]) == [0, 2]
    assert cache.next_position() == 3


def test_cli_generate(tiny_llama_package, capsys, tiny_packages):
    assert main(["generate", str(tiny_llama_package), "--prompt", PROMPTS[0], "--max-new-tokens", "8", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["token_ids"]) <= 8 and document["trace"]["mode"] == "full"
    encoder = tiny_packages[("bert", "text-classification")]
    assert main(["generate", str(encoder), "--prompt", "hello"]) == 2
    assert "not a text-generation package" in capsys.readouterr().err


def test_sequence_confidence_restart(session):
    prompt = PROMPTS[1]
    fp32 = session.generate(prompt, max_new_tokens=24, min_new_tokens=24)
    cheap = session.generate(prompt, max_new_tokens=24, min_new_tokens=24, precision="q8")
    kept = session.generate(prompt, max_new_tokens=24, min_new_tokens=24, precision="q8", restart_below=-1e9)
    assert kept.token_ids == cheap.token_ids and kept.trace.restarts == 0
    pieces: list[str] = []
    redone = session.generate(prompt, max_new_tokens=24, min_new_tokens=24, precision="q8", restart_below=0.0,
                              on_text=pieces.append)
    assert redone.token_ids == fp32.token_ids and redone.trace.restarts == 1
    assert redone.trace.first_min_log_prob == pytest.approx(cheap.min_log_prob)
    assert redone.trace.restart_changed == (cheap.token_ids != fp32.token_ids)
    assert "".join(pieces) == redone.text
    squeezed = session.generate(prompt, max_new_tokens=24, precision="q8", restart_below=0.0, budget_ms=1e-3)
    assert squeezed.trace.restarts == 0  # no time left for a second attempt


@pytest.mark.parametrize("draft_precision,draft_blocks", [("q8", None), ("fp32", 2)])
def test_confidence_limited_drafting_is_exact(session, draft_precision, draft_blocks):
    for prompt in PROMPTS:
        full = session.generate(prompt, max_new_tokens=40, min_new_tokens=40)
        fast = session.generate(prompt, max_new_tokens=40, min_new_tokens=40, mode="speculative", draft_tokens=8,
                                draft_precision=draft_precision, draft_blocks=draft_blocks, draft_confidence=0.6)
        assert fast.token_ids == full.token_ids


@pytest.mark.parametrize("options", [{"draft_blocks": 0}, {"draft_precision": "q8"}, {"draft_blocks": 2}])
def test_context_drafting_is_exact(session, options):
    from edgeinfer.runtime.decoder.drafts import context_proposal

    assert context_proposal([5, 6, 7, 8, 5, 6], 3, 2) == [7, 8]
    assert context_proposal([5, 6, 7], 3, 2) == []
    repetitive = "good movie plot good movie plot good movie"  # something to copy from
    for prompt in [*PROMPTS, repetitive]:
        full = session.generate(prompt, max_new_tokens=40, min_new_tokens=40)
        fast = session.generate(prompt, max_new_tokens=40, min_new_tokens=40, mode="speculative", draft_tokens=5,
                                draft_ngram=3, **options)
        assert fast.token_ids == full.token_ids
        assert fast.trace.drafted > 0


def test_prompt_pruning(session):
    from edgeinfer.runtime.decoder.decoding import prompt_tokens_kept

    kept = prompt_tokens_kept(np.arange(40, dtype=float)[::-1].copy(), 0.5, 40, sinks=2, recent=3)
    assert len(kept) == 20 and {0, 1, 37, 38, 39} <= set(kept.tolist()) and list(kept) == sorted(kept)
    long_prompt = " ".join(["good movie plot rain sun city river"] * 12)
    full = session.generate(long_prompt, max_new_tokens=12, min_new_tokens=12)
    same = session.generate(long_prompt, max_new_tokens=12, min_new_tokens=12, prune_prompt=((2, 1.0),))
    assert same.token_ids == full.token_ids  # keeping everything changes nothing
    pruned = session.generate(long_prompt, max_new_tokens=12, min_new_tokens=12, prune_prompt=((2, 0.3),))
    assert pruned.trace.new_tokens == 12
    with pytest.raises(InputError, match="prune_prompt"):
        session.generate(long_prompt, prune_prompt=((0, 0.5),))
    # speculative decoding over a pruned cache still reproduces that cache's own greedy output
    fast = session.generate(long_prompt, max_new_tokens=12, min_new_tokens=12, prune_prompt=((2, 0.3),),
                            mode="speculative", draft_blocks=2)
    assert fast.token_ids == pruned.token_ids


def test_cli_inspect_and_quantize_decoder(tiny_llama_package, tmp_path, capsys):
    assert main(["inspect", str(tiny_llama_package)]) == 0
    out = capsys.readouterr().out
    assert "text-generation" in out and "identical to PyTorch's for 24 tokens on 3 prompts" in out and "q8" in out
    assert main(["quantize", str(tiny_llama_package), "--quant", "mixed"]) == 2
    assert "does not apply to a text-generation package" in capsys.readouterr().err
    copy = tmp_path / "q4.edge"
    assert main(["quantize", str(tiny_llama_package), "--quant", "q4", "-o", str(copy)]) == 0
    assert [v.name for v in edgeinfer.load(copy).manifest.precision_variants] == ["q8", "q4"]


def test_kv_cap_prunes_the_prompt_to_fit(tiny_llama_package):
    long_prompt = " ".join(["good movie plot rain sun city river"] * 12)
    capped = edgeinfer.load(tiny_llama_package, budget=edgeinfer.Budget(memory_mb=0.03))
    need = (len(capped.encode(long_prompt)) + 8) * capped.facts.kv_bytes_per_token
    assert need > 0.03 * 2**20  # it would not fit whole
    with pytest.raises(BudgetError, match="over the 0.03 MB cap"):
        capped.generate(long_prompt, max_new_tokens=8)
    fitted = capped.generate(long_prompt, max_new_tokens=8, min_new_tokens=8, prune_to_fit=True)
    assert fitted.trace.new_tokens == 8 and fitted.trace.kv_bytes <= 0.03 * 2**20
    tiny = edgeinfer.load(tiny_llama_package, budget=edgeinfer.Budget(memory_mb=0.001))
    with pytest.raises(BudgetError, match="raise the cap to"):
        tiny.generate(long_prompt, max_new_tokens=8, prune_to_fit=True)


def test_embedding_rows_come_from_the_mapped_table(session):
    assert session._table is not None and isinstance(session._table, np.memmap)
    ids = np.array([[3, 7, 11]], np.int64)
    graph_rows = session.runner.graph(session.manifest.segment("embed")).run(None, {"input_ids": ids})[0]
    assert np.array_equal(session.embed(ids), graph_rows)


def test_embedding_table_outside_the_file_is_refused(tiny_llama_package, tmp_path):
    import shutil

    from edgeinfer.errors import PackageError

    copy = tmp_path / "tampered.edge"
    shutil.copytree(tiny_llama_package, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["decoder"]["embedding_offset"] = 10**12
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="outside the package"):
        edgeinfer.load(copy)


def test_threads_share_a_session(session):
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(prompt, mode) for prompt in PROMPTS for mode in ("full", "speculative")]
    expected = [session.generate(p, max_new_tokens=16, min_new_tokens=16, mode=m).token_ids for p, m in jobs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: session.generate(job[0], max_new_tokens=16, min_new_tokens=16,
                                                         mode=job[1]).token_ids, jobs * 3))
    assert got == expected * 3


def test_long_prompts_prefill_in_pieces(tiny_llama_package):
    whole = edgeinfer.load(tiny_llama_package)
    whole.prefill_chunk = 10_000
    pieces = edgeinfer.load(tiny_llama_package)
    pieces.prefill_chunk = 7
    prompt = " ".join(["good movie plot rain sun city river"] * 6)
    assert len(pieces.encode(prompt)) > 3 * 7
    expected = whole.generate(prompt, max_new_tokens=12, min_new_tokens=12)
    for mode in ("full", "speculative"):
        got = pieces.generate(prompt, max_new_tokens=12, min_new_tokens=12, mode=mode)
        assert got.token_ids == expected.token_ids


def test_kv_cap_counts_a_lowered_draft_cache(tiny_llama_package):
    per_token = edgeinfer.load(tiny_llama_package).facts.kv_bytes_per_token
    prompt = PROMPTS[2]
    tokens = len(edgeinfer.load(tiny_llama_package).encode(prompt)) + 10
    cap_mb = 1.5 * tokens * per_token / 2**20  # one cache fits, two do not
    capped = edgeinfer.load(tiny_llama_package, budget=edgeinfer.Budget(memory_mb=cap_mb))
    assert capped.generate(prompt, max_new_tokens=10).trace.new_tokens >= 1
    with pytest.raises(BudgetError):
        capped.generate(prompt, max_new_tokens=10, mode="speculative", draft_precision="q8")
    assert capped.generate(prompt, max_new_tokens=10, mode="speculative", draft_blocks=2).trace.new_tokens >= 1


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
    with pytest.raises(InputError, match="tokens_per_second must be a positive number"):
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
