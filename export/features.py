"""One pass of the frozen backbone over a set of texts, keeping only what exit heads need.

Hidden states are computed once and cached as the per-exit pooled features (first token and
mean), not as full [T, H] tensors: head training then takes seconds, and thousands of
calibration sentences fit in a few tens of MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..manifest import PAD_BIAS
from ..progress import progress_bar
from ..runtime.tokenize import EncodedBatch, TextEncoder
from .segments import EmbedSegment, EncoderBlock


@dataclass
class TorchSegments:
    embed: EmbedSegment
    blocks: list[EncoderBlock]
    head: nn.Module

    def parameters(self) -> list[nn.Parameter]:
        modules = [self.embed, *self.blocks, self.head]
        return list({id(p): p for m in modules for p in m.parameters()}.values())


@dataclass(frozen=True)
class CachedFeatures:
    per_exit: dict[int, torch.Tensor]  # after_block -> [N, F]
    final: torch.Tensor  # [N, C] logits or [N, D] embedding


def attention_bias(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    return torch.where(mask > 0, torch.tensor(0.0), torch.tensor(PAD_BIAS))


def embed_batch(segments: TorchSegments, batch: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(batch.input_ids)
    types = torch.from_numpy(batch.token_type_ids) if segments.embed.uses_token_type_ids else None
    return segments.embed(ids, types), attention_bias(batch.attention_mask)


def length_batches(texts: tuple[str, ...], batch_size: int) -> list[list[int]]:
    """Index batches of similar length, so padding stays small."""
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def collect_features(segments: TorchSegments, encoder: TextEncoder, texts: tuple[str, ...],
                     exit_blocks: tuple[int, ...], features_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     desc: str, batch_size: int = 64) -> CachedFeatures:
    per_exit: dict[int, list[tuple[list[int], torch.Tensor]]] = {b: [] for b in exit_blocks}
    finals: list[tuple[list[int], torch.Tensor]] = []
    batches = length_batches(texts, batch_size)
    with progress_bar(len(batches), desc) as bar:
        for index in batches:
            hidden, bias = embed_batch(segments, encoder.encode([texts[i] for i in index]))
            for depth, block in enumerate(segments.blocks, start=1):
                hidden = block(hidden, bias)[0]
                if depth in per_exit:
                    per_exit[depth].append((index, features_of(hidden, bias)))
            finals.append((index, segments.head(hidden, bias)))
            bar.update()
    return CachedFeatures({b: _in_order(parts, len(texts)) for b, parts in per_exit.items()},
                          _in_order(finals, len(texts)))


def _in_order(parts: list[tuple[list[int], torch.Tensor]], n: int) -> torch.Tensor:
    out = torch.empty((n, parts[0][1].shape[-1]), dtype=parts[0][1].dtype)
    for index, values in parts:
        out[torch.tensor(index)] = values
    return out
