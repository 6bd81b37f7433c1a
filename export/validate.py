"""Export-time proof that the chained graphs compute what the PyTorch model computes.

The reference is the Hugging Face model's own forward (not our rebuilt segments), on random
token sequences of several lengths and on a padded batch, so that a mistake in a block rebuild,
the bias convention or a head shows up here and the export fails loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ExportError
from ..manifest import KEEP_TOKENS, PAD_BIAS, Segment
from ..runtime.sessions import open_session

TOLERANCE = 1e-4


def sample_batches(vocab_size: int, special_ids: tuple[int, ...], cls_id: int, sep_id: int, pad_id: int,
                   max_length: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, attention_mask) pairs: single sequences of several lengths and one padded batch."""
    rng = np.random.default_rng(seed)
    ordinary = np.setdiff1d(np.arange(vocab_size), np.array(special_ids + (pad_id,)))

    def sequence(n: int) -> np.ndarray:
        return np.concatenate([[cls_id], rng.choice(ordinary, size=n - 2), [sep_id]]).astype(np.int64)

    lengths = sorted({min(n, max_length) for n in (4, 16, 64, max_length)})
    batches = [(sequence(n)[None, :], np.ones((1, n), dtype=np.int64)) for n in lengths]
    short, long_ = sequence(5), sequence(min(12, max_length))
    ids = np.full((2, len(long_)), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    ids[0, :5], mask[0, :5] = short, 1
    ids[1], mask[1] = long_, 1
    batches.append((ids, mask))
    return batches


@torch.no_grad()
def reference_output(model: torch.nn.Module, task: str, normalize: bool, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    out = model(input_ids=ids_t, attention_mask=mask_t)
    if task == "text-classification":
        return out.logits.numpy()
    weights = mask_t.unsqueeze(-1).float()
    pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1)
    return (torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled).numpy()


def chain_output(sessions: dict, segments: list[Segment], ids: np.ndarray, mask: np.ndarray,
                 exits: dict[int, Segment]) -> tuple[np.ndarray, dict[int, np.ndarray], dict[str, float]]:
    """Full-depth output of the segment chain, every exit's output, and how far each span's outputs
    are from the chain's (max abs difference)."""
    embed = next(s for s in segments if s.kind == "embed")
    bias = np.where(mask > 0, 0.0, PAD_BIAS).astype(np.float32)
    feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_bias": bias}
    hidden = sessions[embed.name].run(None, {k: feeds[k] for k in embed.inputs})[0]
    produced: dict[str, list[np.ndarray]] = {embed.name: [hidden]}
    blocks = sorted((s for s in segments if s.kind == "block"), key=lambda s: s.index)
    inputs_of: dict[str, np.ndarray] = {}  # the hidden state entering each segment
    for depth, block in enumerate(blocks, start=1):
        inputs_of[block.name] = hidden
        produced[block.name] = sessions[block.name].run(None, {"hidden": hidden, "attention_bias": bias})
        hidden = produced[block.name][0]
        if depth in exits:
            exit_seg = exits[depth]
            produced[exit_seg.name] = sessions[exit_seg.name].run(None, _head_feeds(exit_seg, hidden, bias))
    head = next(s for s in segments if s.kind == "head")
    produced[head.name] = sessions[head.name].run(None, _head_feeds(head, hidden, bias))
    span_diffs = {}
    for span in (s for s in segments if s.kind == "span"):
        first, last = span.covers[0], span.covers[-1]
        span_feeds = feeds if first == embed.name else {"hidden": inputs_of[first], "attention_bias": bias}
        if KEEP_TOKENS in span.inputs:  # keeping every token, the pruning span is the plain model
            span_feeds = {**span_feeds, "protected": np.zeros_like(bias),
                          KEEP_TOKENS: np.full(len(blocks) - 1, ids.shape[1], dtype=np.int64)}
        got = sessions[span.name].run(None, {k: span_feeds[k] for k in span.inputs})
        # a span ending at an exit also gives some or all of its last block's outputs, by the same names
        block_before_tail = next(s for s in segments if s.name == span.covers[-2]) if len(span.covers) > 1 else None
        from_block = dict(zip(block_before_tail.outputs, produced[block_before_tail.name])) if block_before_tail else {}
        expected = [from_block.get(name, produced[last][0]) for name in span.outputs]
        span_diffs[span.name] = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
    exit_outputs = {depth: produced[seg.name][0] for depth, seg in exits.items()}
    return produced[head.name][0], exit_outputs, span_diffs


def _head_feeds(segment: Segment, hidden: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v for k, v in (("hidden", hidden), ("attention_bias", bias)) if k in segment.inputs}


def validate_graphs(graph_dir: Path, segments: list[Segment], exits: dict[int, Segment],
                    exit_modules: dict[int, torch.nn.Module],
                    torch_hidden_at: Callable[[np.ndarray, np.ndarray, int], tuple[torch.Tensor, torch.Tensor]],
                    model: torch.nn.Module, task: str, normalize: bool,
                    batches: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    worst = 0.0
    worst_exit = 0.0
    per_length: list[dict] = []
    sessions = {s.name: open_session(graph_dir / Path(s.graph()).name) for s in segments}
    for ids, mask in batches:
        expected = reference_output(model, task, normalize, ids, mask)
        got, exit_outputs, span_diffs = chain_output(sessions, segments, ids, mask, exits)
        diff = max([float(np.abs(expected - got).max()), *span_diffs.values()])
        worst = max(worst, diff)
        for depth, module in exit_modules.items():
            hidden, bias = torch_hidden_at(ids, mask, depth)
            with torch.no_grad():
                reference = module(hidden, bias).numpy()
            worst_exit = max(worst_exit, float(np.abs(reference - exit_outputs[depth]).max()))
        per_length.append({"batch": int(ids.shape[0]), "tokens": int(ids.shape[1]), "max_abs_diff": diff})
    record = {
        "reference": "Hugging Face forward in PyTorch, fp32",
        "tolerance": TOLERANCE,
        "max_abs_diff": worst,
        "exit_max_abs_diff": worst_exit,
        "cases": per_length,
        "passed": worst <= TOLERANCE and worst_exit <= TOLERANCE,
    }
    if not record["passed"]:
        raise ExportError(f"validation failed: chained ONNX graphs differ from PyTorch by "
                          f"{max(worst, worst_exit):.2e} (> {TOLERANCE}); the package was not written")
    return record
