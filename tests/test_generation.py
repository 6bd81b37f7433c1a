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


def test_a_lowered_precision_speculates_from_the_context_only(session):
    repetitive = "good movie plot good movie plot good movie"
    plain = session.generate(repetitive, max_new_tokens=40, min_new_tokens=40, precision="q8")
    fast = session.generate(repetitive, max_new_tokens=40, min_new_tokens=40, precision="q8", mode="speculative")
    assert fast.trace.drafted > 0 and len(fast.token_ids) == 40
    # the check runs q8 on several tokens at once, whose int8 rounding may differ from one at a time
    assert fast.token_ids[0] == plain.token_ids[0]
    assert np.mean(np.array(fast.token_ids) == np.array(plain.token_ids)) > 0.8
    for options in ({"draft_precision": "q8"}, {"draft_blocks": 2}, {"draft_ngram": 0}):
        with pytest.raises(InputError, match="drafts from the context only"):
            session.generate(repetitive, max_new_tokens=4, precision="q8", mode="speculative", **options)


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
    vocab = session.facts.vocab_size
    with pytest.raises(InputError, match="vocabulary"):
        session.generate([1, vocab], max_new_tokens=2)
    assert session.generate([1, vocab - 1], max_new_tokens=2).token_ids


def test_kv_cache_blocks_may_hold_different_tokens():
    cache = KVCache(2)
    cache.store(0, np.arange(10, dtype=np.float32).reshape(1, 1, 5, 2), np.ones((1, 1, 5, 2), np.float32), np.arange(5))
    cache.store(1, np.arange(6, dtype=np.float32).reshape(1, 1, 3, 2), np.ones((1, 1, 3, 2), np.float32),
                np.array([0, 2, 4]))  # a pruned prompt: the deeper block kept three of five tokens
    assert cache.next_position() == 5 and cache.uniform_from(0) == [1]
    cache.roll_back(3)
    assert cache.length(0) == 3 and cache.length(1) == 2
    assert cache.entries(1)[0][0, 0, :, 0].tolist() == [0, 2] and list(cache.positions[1]) == [0, 2]
    assert cache.next_position() == 3


def test_a_preallocated_cache_writes_in_place_and_rolls_back_by_shortening():
    cache = KVCache(1, capacity=4)
    cache.store(0, np.arange(6, dtype=np.float32).reshape(1, 1, 3, 2), np.ones((1, 1, 3, 2), np.float32), np.arange(3))
    key_buffer, _ = cache.buffers(0, 1, 2, 3)
    assert key_buffer.shape == (1, 1, 4, 2) and cache.nbytes() == 2 * key_buffer.nbytes
    cache.roll_back(2)
    assert cache.entries(0)[0][0, 0, :, 0].tolist() == [0, 2] and key_buffer[0, 0, 2, 0] == 4  # only shortened
    key_buffer[0, 0, 2:5 - 1] = 9.0  # a graph writing two entries in place...
    cache.wrote(range(1), np.array([2, 3]))
    assert cache.entries(0)[0][0, 0, :, 0].tolist() == [0, 2, 9, 9] and cache.next_position() == 4
    cache.bindings["graph"] = object()
    grown, _ = cache.buffers(0, 1, 2, 6)  # a call that outruns its capacity: new buffers, old bindings dropped
    assert grown.shape[2] >= 6 and not cache.bindings and grown[0, 0, :4, 0].tolist() == [0, 2, 9, 9]


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
    assert context_proposal([5, 9, 7, 8, 5], 3, 2) == [9, 7]  # a one-token match
    assert context_proposal([5, 9, 7, 8, 5], 3, 2, shortest=2) == []  # not worth a check beside a model draft
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
    assert edgeinfer.load(copy).screens_head  # a 4-bit head screens too loosely: the q8 screen stays


def test_kv_cap_prunes_the_prompt_to_fit(tiny_llama_package):
    long_prompt = " ".join(["good movie plot rain sun city river"] * 12)
    capped = edgeinfer.load(tiny_llama_package, budget=edgeinfer.Budget(memory_mb=0.06))
    need = (len(capped.encode(long_prompt)) + 8) * capped.facts.kv_bytes_per_token
    assert need > 0.06 * 2**20  # it would not fit whole
    with pytest.raises(BudgetError, match="over the 0.06 MB cap"):
        capped.generate(long_prompt, max_new_tokens=8)
    fitted = capped.generate(long_prompt, max_new_tokens=8, min_new_tokens=8, prune_to_fit=True)
    assert fitted.trace.new_tokens == 8 and fitted.trace.kv_bytes <= 0.06 * 2**20
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


def test_the_head_screen_chooses_the_fp32_heads_token(session, tiny_llama_package):
    """A greedy fp32 step picks its token through the q8 head's screen: the same argmax as the fp32
    head on any state (also with end of sequence ruled out), so the same generations."""
    assert session.screens_head and session.manifest.decoder.head_screen.precision == "q8"
    rng = np.random.default_rng(0)
    hidden_size = session.manifest.model.hidden_size
    eos = tuple(session.facts.eos_ids)
    for scale in (0.1, 1.0, 30.0):
        hidden = (rng.standard_normal((1, 16, hidden_size)) * scale).astype(np.float32)
        exact = session.head(hidden)[0]
        assert np.array_equal(session.greedy_logits(hidden).argmax(-1), exact.argmax(-1))
        exact[:, list(eos)] = -np.inf
        assert np.array_equal(session.greedy_logits(hidden, eos).argmax(-1), exact.argmax(-1))
    unscreened = edgeinfer.load(tiny_llama_package)
    unscreened._screen = None
    for prompt in PROMPTS:
        screened = session.generate(prompt, max_new_tokens=16, min_new_tokens=16)
        plain = unscreened.generate(prompt, max_new_tokens=16, min_new_tokens=16)
        assert screened.token_ids == plain.token_ids
        np.testing.assert_allclose(screened.log_probs, plain.log_probs, atol=0.05)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["decoder"]["head_screen"].update(precision="q4"), "no variant for"),
    (lambda m: m["decoder"]["head_screen"].update(path="graphs/head.onnx"), "listed file of"),
    (lambda m: m["decoder"]["head_screen"].update(block_size=0), "block_size"),
    (lambda m: m["decoder"]["head_screen"].update(weight_offset=10**12), "outside the package"),
])
def test_a_head_screen_the_package_cannot_back_is_refused(tiny_llama_package, tmp_path, edit, match):
    import shutil

    from edgeinfer.errors import PackageError

    copy = tmp_path / "tampered.edge"
    shutil.copytree(tiny_llama_package, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=match):
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


def test_speculative_decoding_by_default_drafts_from_the_context_then_the_closest_variant(session):
    assert session._default_draft_precision() == "q8"
    for prompt in PROMPTS:
        full = session.generate(prompt, max_new_tokens=12, min_new_tokens=12)
        fast = session.generate(prompt, max_new_tokens=12, min_new_tokens=12, mode="speculative")
        assert fast.token_ids == full.token_ids and fast.trace.drafted > 0


def test_a_lowered_draft_works_in_the_one_cache(tiny_llama_package):
    """A q8 draft writes provisional entries into the call's cache, which the check replaces: the
    output is full-depth fp32's, and a KV cap that holds one cache is enough."""
    session = edgeinfer.load(tiny_llama_package)
    per_token = session.facts.kv_bytes_per_token
    prompt = PROMPTS[2]
    tokens = len(session.encode(prompt)) + 10
    cap_mb = 1.5 * tokens * per_token / 2**20  # one cache fits, two would not
    capped = edgeinfer.load(tiny_llama_package, budget=edgeinfer.Budget(memory_mb=cap_mb))
    expected = session.generate(prompt, max_new_tokens=10, min_new_tokens=10)
    for options in ({"draft_precision": "q8"}, {"draft_blocks": 2}, {"draft_precision": "q8", "draft_blocks": 2}):
        got = capped.generate(prompt, max_new_tokens=10, min_new_tokens=10, mode="speculative", **options)
        assert got.token_ids == expected.token_ids and got.trace.kv_bytes <= cap_mb * 2**20
    pruned = session.generate(" ".join([prompt] * 3), max_new_tokens=6, prune_prompt=((1, 0.5),), mode="speculative",
                              draft_precision="q8")  # a pruned cache: the lowered draft runs the traced spans
    assert pruned.trace.new_tokens == 6 or pruned.trace.stopped != "length"


def test_groupqueryattention_spans_answer_as_the_traced_spans(tiny_llama_package):
    """The spans written with onnxruntime's GroupQueryAttention (export/decoder/gqa_graphs.py) carry
    the fast path; with them turned off, the traced spans give the same tokens and near logits. A
    pruned prompt (non-contiguous cache) must take the traced spans."""
    fast = edgeinfer.load(tiny_llama_package)
    traced = edgeinfer.load(tiny_llama_package)
    traced._gqa_precisions = frozenset()
    assert "fp32" in fast._gqa_precisions
    (segment, _), = fast.route(0, fast.num_blocks, (), gqa=True)
    assert "seqlens_k" in segment.inputs
    prompt = PROMPTS[0]
    a = fast.generate(prompt, max_new_tokens=16, min_new_tokens=16)
    b = traced.generate(prompt, max_new_tokens=16, min_new_tokens=16)
    assert a.token_ids == b.token_ids  # in place on a preallocated cache, and concatenated
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-4)
    ids = fast.encode(prompt)
    np.testing.assert_allclose(fast.sequence_logits(ids), traced.sequence_logits(ids), atol=1e-3, rtol=1e-3)
    pruned = fast.generate(" ".join([prompt] * 4), max_new_tokens=4, prune_prompt=((1, 0.5),))
    assert pruned.trace.new_tokens == 4
