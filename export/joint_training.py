"""Exit-aware fine-tuning: backbone and exit heads trained together so early layers learn to answer.

A frozen fine-tuned backbone leaves its middle layers unready (shared/models/README.md). Here the
loss is a depth-weighted mean of per-exit losses, weight proportional to the number of blocks
before the exit as in PABEE (`sum_j j * L_j / sum_j j`, arXiv 2006.04152) and CALM; each L_j mixes
cross-entropy to the labels with KL to the *original* model's final probabilities (LayerSkip /
FastBERT self-distillation), which keeps the final layer close to the model the user gave us.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..progress import progress_bar
from ..runtime.tokenize import TextEncoder
from .calibration_data import Examples
from .exit_heads import distillation_loss
from .features import TorchSegments, embed_batch


@dataclass(frozen=True)
class JointSettings:
    steps: int = 1200
    batch_size: int = 32
    backbone_learning_rate: float = 3e-5
    head_learning_rate: float = 5e-4
    label_weight: float = 0.5
    final_weight_boost: float = 2.0  # the final head's depth weight is multiplied by this
    warmup_share: float = 0.06
    seed: int = 0


@torch.no_grad()
def final_probabilities(segments: TorchSegments, encoder: TextEncoder, texts: tuple[str, ...],
                        batch_size: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(texts), batch_size):
        hidden, bias = embed_batch(segments, encoder.encode(list(texts[start:start + batch_size])))
        for block in segments.blocks:
            hidden, _ = block(hidden, bias)
        out.append(torch.softmax(segments.head(hidden, bias), -1))
    return torch.cat(out).numpy()


def fine_tune_jointly(segments: TorchSegments, exit_modules: dict[int, nn.Module], encoder: TextEncoder,
                      examples: Examples, settings: JointSettings = JointSettings()) -> dict:
    if examples.labels is None:
        raise ExportError("--train-exits joint needs labels; give --calib a TSV with a label column")
    teacher = torch.from_numpy(final_probabilities(segments, encoder, examples.texts))
    labels = torch.tensor(examples.labels)
    depth_weights = {depth: float(depth) for depth in exit_modules}
    num_blocks = len(segments.blocks)
    depth_weights[num_blocks] = float(num_blocks) * settings.final_weight_boost
    total_weight = sum(depth_weights.values())
    head_params = [p for m in exit_modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW([
        {"params": segments.parameters(), "lr": settings.backbone_learning_rate},
        {"params": head_params, "lr": settings.head_learning_rate},
    ], weight_decay=0.01)
    warmup = max(1, int(settings.steps * settings.warmup_share))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    with torch.enable_grad(), progress_bar(settings.steps, "joint fine-tuning") as bar:
        for module in [segments.embed, *segments.blocks, segments.head, *exit_modules.values()]:
            module.train()
        for step in range(settings.steps):
            index = torch.randint(len(examples), (settings.batch_size,), generator=generator)
            batch = encoder.encode([examples.texts[i] for i in index])
            hidden, bias = embed_batch(segments, batch)
            loss = torch.zeros(())
            for depth, block in enumerate(segments.blocks, start=1):
                hidden, _ = block(hidden, bias)
                if depth in exit_modules:
                    logits = exit_modules[depth](hidden, bias)
                    loss = loss + depth_weights[depth] * distillation_loss(
                        logits, teacher[index], labels[index], settings.label_weight)
            logits = segments.head(hidden, bias)
            loss = loss + depth_weights[num_blocks] * distillation_loss(
                logits, teacher[index], labels[index], settings.label_weight)
            loss = loss / total_weight
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(segments.parameters() + head_params, 1.0)
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
        "loss": "depth-weighted mean over exits and the final head of "
                f"{1 - settings.label_weight:.2f} KL to the original model + {settings.label_weight:.2f} cross-entropy",
        "first_loss": round(float(np.mean(losses[:20])), 6),
        "last_loss": round(float(np.mean(losses[-20:])), 6),
    }
