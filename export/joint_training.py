"""Exit-aware fine-tuning: backbone and exit heads trained together so early layers learn to answer.

A frozen fine-tuned backbone leaves its middle layers unready: heads on it after blocks 1-3
stayed near chance. Here the loss is a depth-weighted mean of per-exit losses, weight proportional
to the number of blocks before the exit as in PABEE (`sum_j j * L_j / sum_j j`, arXiv 2006.04152) and CALM; each exit's
L_j mixes cross-entropy to the labels (when there are any) with KL to the *original* model's final
probabilities (LayerSkip / FastBERT self-distillation); the final head's is the KL alone, which keeps
the final layer close to the model the user gave us. A sentence-embedding model has no labels and
no probabilities: every exit and the final layer learn the original model's embeddings instead
(embedding_distillation_loss).
With `pruned_share` > 0 that share of the steps also prunes tokens as the runtime would
(export/pruning_training.py), against the same unpruned teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..manifest import TOKEN_SCORES
from ..progress import progress_bar
from ..runtime.tokenize import TextEncoder
from .calibration_data import Examples
from .exit_heads import distillation_loss
from .features import TorchSegments, embed_batch, length_batches
from .pruning_training import PruningFamily, prune_padded, sample_keep_schedule


@dataclass(frozen=True)
class JointSettings:
    steps: int = 1000
    batch_size: int = 32
    backbone_learning_rate: float = 3e-5
    head_learning_rate: float = 5e-4
    label_weight: float = 0.5  # the exits' cross-entropy to labels, beside KL to the original model
    # The final head learns from the original model alone: it is the model the user gave us, and
    # labels pulled it away (SST-2: 4% of dev answers changed, -0.7 pt accuracy at 1000 steps).
    final_label_weight: float = 0.0
    final_weight_boost: float = 2.0  # the final head's depth weight is multiplied by this
    warmup_share: float = 0.06
    seed: int = 0
    pruning: PruningFamily | None = None  # keep schedules some steps prune with; None: no pruning
    importance: str = "token_importance"  # the score those steps prune by


def _length_bucketed_batches(encoder: TextEncoder, texts: tuple[str, ...], batch_size: int, steps: int,
                             seed: int) -> list[torch.Tensor]:
    """Random batches of similar length: padding is wasted compute, and on two cores a padded
    batch of SST-2 phrases cost ~4x a bucketed one."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.float64)
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        jitter = torch.rand(len(texts), generator=generator, dtype=torch.float64) * 8.0  # mix similar lengths
        order = torch.argsort(lengths + jitter)
        chunks = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        for j in torch.randperm(len(chunks), generator=generator).tolist():
            batches.append(chunks[j])
    return batches[:steps]


@torch.no_grad()
def final_answers(segments: TorchSegments, encoder: TextEncoder, texts: tuple[str, ...],
                        batch_size: int = 64, stage: str = "final layer's outputs", embeddings: bool = False
                        ) -> np.ndarray:
    """The final head's class probabilities, or (embeddings=True) its embeddings, for every text."""
    out: np.ndarray | None = None
    batches = length_batches(texts, batch_size)
    with progress_bar(len(batches), stage) as bar:
        for index in batches:
            hidden, bias = embed_batch(segments, encoder.encode([texts[i] for i in index]))
            for block in segments.blocks:
                hidden = block(hidden, bias)[0]
            answer = segments.head(hidden, bias)
            probabilities = (answer if embeddings else torch.softmax(answer, -1)).numpy()
            if out is None:
                out = np.empty((len(texts), probabilities.shape[1]), dtype=np.float32)
            out[index] = probabilities
            bar.update()
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def embedding_distillation_loss(embedding: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine to the original model's embedding, plus the mean squared difference between the
    batch's pairwise cosines and the original's (relational knowledge distillation, Park et al.
    2019): a search ranks texts by those cosines, so their structure is what has to survive."""
    student, target = nn.functional.normalize(embedding, dim=-1), nn.functional.normalize(teacher, dim=-1)
    pointwise = (1.0 - (student * target).sum(-1)).mean()
    relational = torch.square(student @ student.T - target @ target.T).mean()
    return pointwise + relational


def fine_tune_jointly(segments: TorchSegments, exit_modules: dict[int, nn.Module], encoder: TextEncoder,
                      examples: Examples, settings: JointSettings = JointSettings(), embeddings: bool = False) -> dict:
    """embeddings=True: a sentence-embedding model, trained without labels against its own
    embeddings (embedding_distillation_loss) at every exit and at the final layer."""
    teacher = torch.from_numpy(final_answers(segments, encoder, examples.texts, stage="teacher outputs",
                                                   embeddings=embeddings))
    # without labels, every exit (and the final layer) learns from the original model alone
    labels = torch.tensor(examples.labels) if examples.labels is not None and not embeddings else None

    def distance(answer: torch.Tensor, index: torch.Tensor, label_weight: float) -> torch.Tensor:
        if embeddings:
            return embedding_distillation_loss(answer, teacher[index])
        return distillation_loss(answer, teacher[index], None if labels is None else labels[index], label_weight)

    depth_weights = {depth: float(depth) for depth in exit_modules}
    num_blocks = len(segments.blocks)
    depth_weights[num_blocks] = float(num_blocks) * settings.final_weight_boost
    total_weight = sum(depth_weights.values())
    head_params = [p for m in exit_modules.values() for p in m.parameters()]
    # The embedding table (12M of MiniLM's 23M parameters) stays frozen: its gradient is sparse and
    # Adam's update of it dominated a step's cost while early exits need the blocks to change.
    backbone_params = list({id(p): p for m in [*segments.blocks, segments.head] for p in m.parameters()}.values())
    for parameter in segments.embed.parameters():
        parameter.requires_grad_(False)
    for parameter in backbone_params:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW([
        {"params": backbone_params, "lr": settings.backbone_learning_rate},
        {"params": head_params, "lr": settings.head_learning_rate},
    ], weight_decay=0.01)
    warmup = max(1, int(settings.steps * settings.warmup_share))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = _length_bucketed_batches(encoder, examples.texts, settings.batch_size, settings.steps, settings.seed)
    losses: list[float] = []
    pruning = torch.Generator().manual_seed(settings.seed + 1)
    score_output = 1 + TOKEN_SCORES.index(settings.importance)  # EncoderBlock gives hidden, *TOKEN_SCORES
    family = settings.pruning
    with torch.enable_grad(), progress_bar(settings.steps, "joint fine-tuning") as bar:
        for module in [segments.embed, *segments.blocks, segments.head, *exit_modules.values()]:
            module.train()
        for step in range(settings.steps):
            index = batches[step]
            batch = encoder.encode([examples.texts[i] for i in index])
            hidden, bias = embed_batch(segments, batch)
            pruned = family is not None and float(torch.rand((), generator=pruning)) < family.share
            keep_schedule = sample_keep_schedule(pruning, num_blocks, family) if pruned else {}
            protected = torch.from_numpy(batch.special_mask)
            original_tokens = torch.from_numpy(batch.lengths)
            loss = torch.zeros(())
            for depth, block in enumerate(segments.blocks, start=1):
                outputs = block(hidden, bias)
                hidden = outputs[0]
                if depth in exit_modules:
                    answer = exit_modules[depth](hidden, bias)
                    loss = loss + depth_weights[depth] * distance(answer, index, settings.label_weight)
                if depth in keep_schedule:  # after the exit, as the runtime does
                    hidden, bias, protected = prune_padded(hidden, bias, protected, outputs[score_output],
                                                           original_tokens, keep_schedule[depth])
            answer = segments.head(hidden, bias)
            loss = loss + depth_weights[num_blocks] * distance(answer, index, settings.final_label_weight)
            loss = loss / total_weight
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(backbone_params + head_params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update()
    for module in [segments.embed, *segments.blocks, segments.head, *exit_modules.values()]:
        module.eval()
    return {
        "steps": settings.steps, "batch_size": settings.batch_size,
        "backbone_learning_rate": settings.backbone_learning_rate,
        "head_learning_rate": settings.head_learning_rate,
        "loss": "depth-weighted mean over exits and the final head of " + (
            "1 - cosine to the original model's embedding + the squared difference of the batch's pairwise "
            "cosines from the original's (no labels: self-distillation)" if embeddings else
            f"{1 - settings.label_weight:.2f} KL to the original model + {settings.label_weight:.2f} cross-entropy "
            f"(the final head: {1 - settings.final_label_weight:.2f} KL + {settings.final_label_weight:.2f} cross-entropy)"
            if labels is not None else "KL to the original model (no labels: self-distillation)"),
        **({"pruning": {"share_of_steps": settings.pruning.share, "importance": settings.importance,
                        "schedules": settings.pruning.describe()}} if settings.pruning is not None else {}),
        "first_loss": round(float(np.mean(losses[:20])), 6),
        "last_loss": round(float(np.mean(losses[-20:])), 6),
    }
