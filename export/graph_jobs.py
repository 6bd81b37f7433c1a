"""The graphs an encoder package holds, as PyTorch modules with trace inputs: the segments (embed,
blocks, exit heads, head), the fused full span, the stage spans (a block with its exit, with and
without token scores) and the full depth that prunes inside. The ONNX export (pipeline.py) and the
LiteRT conversion (litert.py) both start from these jobs."""

from __future__ import annotations

import torch

from ..manifest import KEEP_TOKENS, PRUNED_FULL
from .exit_heads import ClassifierExit, EmbeddingExit, LinearClassifierExit
from .features import TorchSegments
from .model_source import LoadedModel
from .onnx_graphs import GraphJob
from .segments import ClassifierHead, EmbedSegment, EncoderBlock, FullDepth, MeanPoolHead, PrunedFullDepth, Stage


def build_segments(loaded: LoadedModel, task: str) -> TorchSegments:
    adapter, model = loaded.adapter, loaded.model
    embed_fn, uses_types = adapter.embeddings(model)
    blocks = [EncoderBlock(parts) for parts in adapter.blocks(model)]
    head = ClassifierHead(adapter.classifier(model)) if task == "text-classification" \
        else MeanPoolHead(loaded.normalize_embedding)
    return TorchSegments(EmbedSegment(embed_fn, model, uses_types), blocks, head)


def make_exit(task: str, loaded: LoadedModel, segments: TorchSegments, head: str = "pooler") -> torch.nn.Module:
    hidden = segments.blocks[0].query.in_features
    if task == "text-classification":
        shape = LinearClassifierExit if head == "linear" else ClassifierExit
        return shape(loaded.adapter.classifier(loaded.model), hidden)
    return EmbeddingExit(hidden, loaded.normalize_embedding)


LEAN_SUFFIX = "_lean"  # a stage span without the token scores (Stage(scores=False))


def graph_jobs(segments: TorchSegments, exit_modules: dict[int, torch.nn.Module],
               pruning: str | None = None) -> list[GraphJob]:
    """Every graph of an encoder package, as PyTorch modules with trace inputs: the segments, the
    fused full span and the stage spans. ONNX export and LiteRT conversion both start here.
    pruning: also the full depth that prunes inside, ranking by this score (segments.PrunedFullDepth);
    ONNX only, since LiteRT's converted graphs have fixed token buckets and top-k needs a dynamic
    count."""
    hidden_size = segments.blocks[0].query.in_features
    ids = torch.arange(1, 7, dtype=torch.long).unsqueeze(0)  # trace inputs only; every axis is dynamic
    types = torch.zeros_like(ids)
    hidden = torch.randn(1, ids.shape[1], hidden_size)
    bias = torch.zeros(1, ids.shape[1])
    out_name = "logits" if isinstance(segments.head, ClassifierHead) else "embedding"
    jobs: list[GraphJob] = []
    embed_inputs = ["input_ids", "token_type_ids"] if segments.embed.uses_token_type_ids else ["input_ids"]
    embed_args = (ids, types) if segments.embed.uses_token_type_ids else (ids,)
    jobs.append(GraphJob("embed", "embed", 0, segments.embed, embed_args, embed_inputs, ["hidden"]))
    block_outputs = ["next_hidden", "token_importance", "cls_attention"]
    for i, block in enumerate(segments.blocks):
        jobs.append(GraphJob(f"block_{i:02d}", "block", i, block, (hidden, bias), ["hidden", "attention_bias"],
                              block_outputs))
    for depth, module in sorted(exit_modules.items()):
        jobs.append(GraphJob(f"exit_{depth:02d}", "exit", depth, module, (hidden, bias),
                              ["hidden", "attention_bias"], [out_name]))
    jobs.append(GraphJob("head", "head", 0, segments.head, (hidden, bias), ["hidden", "attention_bias"], [out_name]))
    full = FullDepth(segments.embed, segments.blocks, segments.head)
    num_blocks = len(segments.blocks)
    full_covers = ("embed", *(f"block_{i:02d}" for i in range(num_blocks)), "head")
    jobs.append(GraphJob("full", "span", 0, full, (*embed_args, bias), [*embed_inputs, "attention_bias"],
                          [out_name], full_covers))
    for depth, module in sorted(exit_modules.items()):  # block + its exit (the first with the embedding)
        first = depth == 1
        covers = (*(("embed",) if first else ()), f"block_{depth - 1:02d}", f"exit_{depth:02d}")
        for scores, suffix in ((True, ""), (False, LEAN_SUFFIX)):  # lean: for runs that do not prune here
            stage = Stage(segments.embed if first else None, [segments.blocks[depth - 1]], module,
                          tail_is_head=False, scores=scores)
            jobs.append(GraphJob(f"stage_{depth:02d}{suffix}", "span", depth, stage,
                                  (*embed_args, bias) if first else (hidden, bias),
                                  [*embed_inputs, "attention_bias"] if first else ["hidden", "attention_bias"],
                                  [*(block_outputs if scores else block_outputs[:1]), out_name], covers))
    last = Stage(None, [segments.blocks[-1]], segments.head, tail_is_head=True)
    jobs.append(GraphJob("stage_head", "span", num_blocks, last, (hidden, bias), ["hidden", "attention_bias"],
                          [out_name], (f"block_{num_blocks - 1:02d}", "head")))
    if pruning is not None:
        protected = torch.zeros(1, ids.shape[1])
        keep = torch.full((num_blocks - 1,), ids.shape[1], dtype=torch.long)
        jobs.append(GraphJob(PRUNED_FULL, "span", 0,
                             PrunedFullDepth(segments.embed, segments.blocks, segments.head, pruning),
                             (*embed_args, bias, protected, keep),
                             [*embed_inputs, "attention_bias", "protected", KEEP_TOKENS], [out_name],
                             full_covers, ranks_by=pruning))
    return jobs
