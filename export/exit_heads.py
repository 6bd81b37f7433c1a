"""Early-exit heads and their training on cached features of a frozen backbone.

Classification exits are shaped like the model's own head (dense + activation + classifier),
initialised from it, but read the first token *and* the size-weighted mean of all tokens: a
fine-tuned backbone's middle layers carry the answer in the pool before the first token learns to
(CLS-only heads after blocks 1-3 of minilm-sst2 stayed near chance).
They are trained by self-distillation (FastBERT: KL to the final layer's probabilities) plus
cross-entropy where labels exist. Embedding exits are a mean pool and a linear map initialised to
the identity, trained with a cosine loss towards the final embedding.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .segments import ACTIVATIONS, ClassifierParts, mean_pool


class ClassifierExit(nn.Module):
    def __init__(self, parts: ClassifierParts, hidden_size: int):
        super().__init__()
        own = parts.dense
        self.dense = nn.Linear(2 * hidden_size, own.out_features)
        with torch.no_grad():
            self.dense.weight.zero_()
            self.dense.weight[:, :hidden_size].copy_(own.weight)
            self.dense.bias.copy_(own.bias)
        self.activation_name = parts.activation
        self.out = copy.deepcopy(parts.out)

    @staticmethod
    def features(hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        return torch.cat([hidden[:, 0], mean_pool(hidden, attention_bias)], dim=-1)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(ACTIVATIONS[self.activation_name](self.dense(features)))

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(hidden, attention_bias))


class LinearClassifierExit(nn.Module):
    """The same features as ClassifierExit straight into the classes: no hidden dense layer.

    A stage graph reads its exit's weights for one row per call, so the pooler-shaped head's
    768 x 384 dense layer (1.2 MB of fp32 for MiniLM) cost ~0.17 ms per exit here, about a fifth
    of an int8 block (bench/RESULTS-archive.md, "Where the segmented path loses time"). Without a frozen
    backbone to adapt to (`--train-exits joint` fine-tunes it towards its exits) a linear map is
    enough; on a frozen backbone the pooler-shaped head, initialised from the model's own, is.
    """

    def __init__(self, parts: ClassifierParts, hidden_size: int):
        super().__init__()
        self.out = nn.Linear(2 * hidden_size, parts.out.out_features)

    features = staticmethod(ClassifierExit.features)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(features)

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(hidden, attention_bias))


EXIT_HEADS = ("pooler", "linear")


class EmbeddingExit(nn.Module):
    def __init__(self, hidden_size: int, normalize: bool):
        super().__init__()
        self.project = nn.Linear(hidden_size, hidden_size)
        with torch.no_grad():
            self.project.weight.copy_(torch.eye(hidden_size))
            self.project.bias.zero_()
        self.normalize = normalize

    @staticmethod
    def features(hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        return mean_pool(hidden, attention_bias)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        return nn.functional.normalize(projected, dim=-1) if self.normalize else projected

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(hidden, attention_bias))


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_weight: float = 0.5  # share of cross-entropy to the labels beside the distillation KL
    seed: int = 0


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor | None,
                      label_weight: float) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, dim=-1)
    kl = nn.functional.kl_div(log_probs, teacher_probs, reduction="batchmean")
    if labels is None:
        return kl
    return (1.0 - label_weight) * kl + label_weight * nn.functional.nll_loss(log_probs, labels)


def cosine_loss(embedding: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None,
                label_weight: float) -> torch.Tensor:
    return (1.0 - nn.functional.cosine_similarity(embedding, target, dim=-1)).mean()


def train_head(head: nn.Module, features: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None,
               loss_fn: Callable[..., torch.Tensor], settings: TrainingSettings,
               on_step: Callable[[], None] | None = None) -> float:
    """Train one head on cached features; returns the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs * steps_per_epoch)
    head.train()
    last = float("nan")
    for _ in range(settings.epochs):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in range(0, len(features), settings.batch_size):
            index = order[start:start + settings.batch_size]
            batch_labels = labels[index] if labels is not None else None
            loss = loss_fn(head.from_features(features[index]), target[index], batch_labels, settings.label_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        last = total / len(features)
        if on_step is not None:
            on_step()
    head.eval()
    return last
