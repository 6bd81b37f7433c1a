"""DistilBERT: no token types, q_lin/k_lin/v_lin attention, pre_classifier + ReLU head."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...errors import ExportError
from ..segments import BlockParts, ClassifierParts

MODEL_TYPES = ("distilbert",)


def embeddings(model: nn.Module) -> tuple[Callable[..., torch.Tensor], bool]:
    base = model.base_model

    def embed(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        return base.embeddings(input_ids)

    return embed, False


def blocks(model: nn.Module) -> list[BlockParts]:
    config = model.config
    return [
        BlockParts(
            query=layer.attention.q_lin,
            key=layer.attention.k_lin,
            value=layer.attention.v_lin,
            attention_out=layer.attention.out_lin,
            attention_norm=layer.sa_layer_norm,
            ffn_in=layer.ffn.lin1,
            ffn_out=layer.ffn.lin2,
            ffn_norm=layer.output_layer_norm,
            activation=layer.ffn.activation,
            num_heads=config.n_heads,
        )
        for layer in model.base_model.transformer.layer
    ]


def classifier(model: nn.Module) -> ClassifierParts:
    if not hasattr(model, "pre_classifier"):
        raise ExportError("this checkpoint has no classification head; use --task feature-extraction")
    return ClassifierParts(dense=model.pre_classifier, activation="relu", out=model.classifier)
