"""BERT family: bert (MiniLM checkpoints are BERTs), roberta, xlm-roberta, electra.

They share the post-norm block layout (`attention.self.{query,key,value}`, `attention.output`,
`intermediate`, `output`) and differ only in embeddings and classification head.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...errors import ExportError
from ..segments import BlockParts, ClassifierParts

MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra")


def embeddings(model: nn.Module) -> tuple[Callable[..., torch.Tensor], bool]:
    base = model.base_model
    project = getattr(base, "embeddings_project", None)  # ELECTRA when embedding_size != hidden

    def embed(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        hidden = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return project(hidden) if project is not None else hidden

    return embed, True


def blocks(model: nn.Module) -> list[BlockParts]:
    config = model.config
    return [
        BlockParts(
            query=layer.attention.self.query,
            key=layer.attention.self.key,
            value=layer.attention.self.value,
            attention_out=layer.attention.output.dense,
            attention_norm=layer.attention.output.LayerNorm,
            ffn_in=layer.intermediate.dense,
            ffn_out=layer.output.dense,
            ffn_norm=layer.output.LayerNorm,
            activation=layer.intermediate.intermediate_act_fn,
            num_heads=config.num_attention_heads,
        )
        for layer in model.base_model.encoder.layer
    ]


def classifier(model: nn.Module) -> ClassifierParts:
    head = getattr(model, "classifier", None)
    if head is None:
        raise ExportError("this checkpoint has no classification head; use --task feature-extraction")
    if isinstance(head, nn.Linear):  # BERT: pooler + classifier
        pooler = getattr(model.base_model, "pooler", None)
        if pooler is None:
            raise ExportError("this BERT checkpoint has no pooler; its classification head cannot be exported")
        return ClassifierParts(dense=pooler.dense, activation="tanh", out=head)
    activation = "gelu" if model.config.model_type == "electra" else "tanh"
    return ClassifierParts(dense=head.dense, activation=activation, out=head.out_proj)
