"""The decoder package's graphs: what each one computes and how its axes are named.

Every block graph names its cache inputs after the block (`past_key_07` -> `present_key_07`), so a
span of blocks has one pair per block it covers and the runtime feeds any graph by name alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...manifest import Segment, Variant
from ...progress import progress_bar
from ..onnx_graphs import GraphJob, export_graph
from ..shared_weights import WEIGHTS_FILE, share_weights
from .gqa_graphs import gqa_supported, write_gqa_span
from .segments import DecoderModules, DecoderSpan, cache_names


def decoder_axes(names: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        if name.startswith("past_"):
            axes[name] = {0: "batch", 2: "past"}
        elif name.startswith("present_"):
            axes[name] = {0: "batch", 2: "total"}
        elif name in ("attention_bias", "attention_received"):
            axes[name] = {0: "batch", 1: "total"}
        else:  # input_ids, position_ids, hidden, next_hidden, logits
            axes[name] = {0: "batch", 1: "new"}
    return axes


def span_ranges(exits: tuple[int, ...], num_blocks: int) -> list[range]:
    """Blocks between decisions run as one graph: the whole depth, and each stretch between exits."""
    edges = [0, *exits, num_blocks]
    stretches = [range(a, b) for a, b in zip(edges, edges[1:]) if b - a > 1]
    return [range(0, num_blocks), *(r for r in stretches if len(r) < num_blocks)]


def export_decoder_graphs(graph_dir: Path, modules: DecoderModules, exits: tuple[int, ...]) -> list[Segment]:
    shape = modules.shape
    new, past = 2, 3  # trace sizes only; every axis is dynamic
    ids = torch.arange(1, new + 1, dtype=torch.long).unsqueeze(0)
    hidden = torch.randn(1, new, shape.hidden_size)
    positions = torch.arange(past, past + new).unsqueeze(0)
    bias = torch.zeros(1, past + new)
    cache = lambda: torch.randn(1, shape.num_kv_heads, past, shape.head_dim)  # noqa: E731
    front = ["hidden", "position_ids", "attention_bias"]
    jobs = [GraphJob("embed", "embed", 0, modules.embed, (ids,), ["input_ids"], ["hidden"])]
    for i, block in enumerate(modules.blocks):
        jobs.append(GraphJob(f"block_{i:02d}", "block", i, block, (hidden, positions, bias, cache(), cache()),
                         [*front, *cache_names("past", range(i, i + 1))],
                         ["next_hidden", *cache_names("present", range(i, i + 1)), "attention_received"]))
    for i in range(shape.num_blocks):
        jobs.append(GraphJob(f"kv_{i:02d}", "kv", i, modules.key_value(i), (hidden, positions, cache(), cache()),
                         ["hidden", "position_ids", *cache_names("past", range(i, i + 1))],
                         cache_names("present", range(i, i + 1))))
    jobs.append(GraphJob("head", "head", 0, modules.head, (hidden,), ["hidden"], ["logits", "normed"]))
    for blocks in span_ranges(exits, shape.num_blocks):
        span = DecoderSpan([modules.blocks[b] for b in blocks])
        past_args = tuple(cache() for _ in range(2 * len(blocks)))
        jobs.append(GraphJob(_span_name(blocks, shape.num_blocks, "span"), "span", blocks[0], span,
                             (hidden, positions, bias, *past_args), [*front, *cache_names("past", blocks)],
                             ["next_hidden", *cache_names("present", blocks), "attention_received"],
                             _block_names(blocks)))
    segments: list[Segment] = []
    fast_spans = span_ranges(exits, shape.num_blocks) if gqa_supported(modules.blocks) is None else []
    with progress_bar(len(jobs) + len(fast_spans), "exporting graphs") as bar:
        for job in jobs:
            path = graph_dir / f"{job.name}.onnx"
            inputs, outputs = export_graph(job.module, job.args, job.inputs, job.outputs, path,
                                           decoder_axes(job.inputs + job.outputs))
            segments.append(Segment(name=job.name, kind=job.kind, index=job.index, inputs=tuple(inputs),
                                    outputs=tuple(outputs), variants=(Variant("fp32", f"graphs/{job.name}.onnx"),),
                                    covers=job.covers))
            bar.update()
        for blocks in fast_spans:
            segments.append(_gqa_span(graph_dir, modules, blocks))
            bar.update()
    share_weights([graph_dir / f"{s.name}.onnx" for s in segments], graph_dir / WEIGHTS_FILE)
    return segments


def _gqa_span(graph_dir: Path, modules: DecoderModules, blocks: range) -> Segment:
    """A stretch of blocks written with onnxruntime's generative operators (gqa_graphs.py), which the
    runtime calls whenever a step needs neither a pruned cache nor the attention received."""
    name = _span_name(blocks, modules.shape.num_blocks, "gqa")
    inputs, outputs = write_gqa_span([modules.blocks[b] for b in blocks], blocks[0], modules.shape,
                                     graph_dir / f"{name}.onnx")
    return Segment(name=name, kind="span", index=blocks[0], inputs=tuple(inputs), outputs=tuple(outputs),
                   variants=(Variant("fp32", f"graphs/{name}.onnx"),), covers=_block_names(blocks))


def _span_name(blocks: range, num_blocks: int, kind: str) -> str:
    """"blocks" / "gqa_blocks" for the whole depth, else "span_08_15" / "gqa_08_15"."""
    if len(blocks) == num_blocks:
        return "blocks" if kind == "span" else f"{kind}_blocks"
    return f"{kind}_{blocks[0]:02d}_{blocks[-1] + 1:02d}"


def _block_names(blocks: range) -> tuple[str, ...]:
    return tuple(f"block_{b:02d}" for b in blocks)
