"""The PyTorch modules that become the package's graphs.

Blocks are rebuilt from the family's weights rather than called through Hugging Face, because
the package contract needs two things HF layers do not give in every attention implementation:
an additive per-token `attention_bias` (padding, and log(size) for merged tokens as in ToMe's
proportional attention) and the attention each token receives (`token_importance`, the LTP
score: mean over heads and valid queries). The modules hold references to the original
parameters, so fine-tuning them fine-tunes the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..manifest import VALID_BIAS_FLOOR


@dataclass(frozen=True)
class BlockParts:
    """A post-norm transformer encoder block (BERT and DistilBERT share this shape)."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_out: nn.Linear
    attention_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm
    activation: Callable[[torch.Tensor], torch.Tensor]
    num_heads: int


@dataclass(frozen=True)
class ClassifierParts:
    """logits = out(activation(dense(hidden[:, 0]))): BERT, RoBERTa, ELECTRA and DistilBERT heads."""

    dense: nn.Linear
    activation: str
    out: nn.Linear


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
}


def token_weights(attention_bias: torch.Tensor) -> torch.Tensor:
    """How many original tokens each position stands for: exp(bias) is 0 for padding, size for merges."""
    return torch.exp(attention_bias)


def mean_pool(hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
    weights = token_weights(attention_bias).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class EncoderBlock(nn.Module):
    def __init__(self, parts: BlockParts):
        super().__init__()
        self.query, self.key, self.value = parts.query, parts.key, parts.value
        self.attention_out, self.attention_norm = parts.attention_out, parts.attention_norm
        self.ffn_in, self.ffn_out, self.ffn_norm = parts.ffn_in, parts.ffn_out, parts.ffn_norm
        self.activation = parts.activation
        self.num_heads = parts.num_heads
        self.head_dim = parts.query.out_features // parts.num_heads

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def attention(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part that mixes tokens: -> each token's attention context and the attention
        probabilities [batch, heads, queries, keys]."""
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim ** -0.5)
        probs = torch.softmax(scores + attention_bias[:, None, None, :], dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).reshape(hidden.shape), probs

    def per_token(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The rest of the block, token by token: output projection, feed-forward and both norms."""
        attended = self.attention_norm(hidden + self.attention_out(context))
        return self.ffn_norm(attended + self.ffn_out(self.activation(self.ffn_in(attended))))

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> next hidden, attention received (LTP score), attention from the first token (EViT score)."""
        context, probs = self.attention(hidden, attention_bias)
        out = self.per_token(hidden, context)
        valid_queries = (attention_bias > VALID_BIAS_FLOOR).to(hidden.dtype)
        head_mean = probs.mean(1)
        received = (head_mean * valid_queries.unsqueeze(-1)).sum(1)
        importance = received / valid_queries.sum(1, keepdim=True).clamp_min(1.0)
        return out, importance, head_mean[:, 0]


class EmbedSegment(nn.Module):
    """input_ids[, token_type_ids] -> hidden, through the family's own embedding module."""

    def __init__(self, embed: Callable[..., torch.Tensor], owner: nn.Module, uses_token_type_ids: bool):
        super().__init__()
        self.owner = owner  # registers the parameters the callable uses
        self.embed = embed
        self.uses_token_type_ids = uses_token_type_ids

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(input_ids, token_type_ids)


class ClassifierHead(nn.Module):
    """The model's own classification head on the first token."""

    def __init__(self, parts: ClassifierParts):
        super().__init__()
        self.dense, self.out = parts.dense, parts.out
        self.activation = ACTIVATIONS[parts.activation]

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        return self.out(self.activation(self.dense(hidden[:, 0])))


class MeanPoolHead(nn.Module):
    """Sentence embedding as sentence-transformers computes it: mean over tokens, optionally L2-normalised."""

    def __init__(self, normalize: bool):
        super().__init__()
        self.normalize = normalize

    def forward(self, hidden: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        pooled = mean_pool(hidden, attention_bias)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class FullDepth(nn.Module):
    """embed -> every block -> head as one graph: the path on which nothing is decided.

    Running it as one onnxruntime call costs nothing over a monolithic export, where the chain of
    segment calls cost 10-20% more on MiniLM (numpy hand-offs, per-call overhead, and the
    token_importance every block graph computes).
    """

    def __init__(self, embed: EmbedSegment, blocks: list[EncoderBlock], head: nn.Module):
        super().__init__()
        self.embed, self.blocks, self.head = embed, nn.ModuleList(blocks), head

    def forward(self, input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        token_type_ids, attention_bias = rest if len(rest) == 2 else (None, rest[0])
        hidden = self.embed(input_ids, token_type_ids)
        for block in self.blocks:
            hidden = block(hidden, attention_bias)[0]
        return self.head(hidden, attention_bias)


PROTECTED_SCORE = 1e9  # above any attention sum (at most heads x tokens)


class PrunedFullDepth(nn.Module):
    """embed -> every block -> head as one graph that prunes tokens between blocks itself.

    Pruning between separate block graphs pays a call, a hand-off and Python per block, and on
    AG News that chain cost more than the pruned tokens saved (bench/RESULTS-archive.md). Here the runtime
    passes how many tokens stay after each block (`keep_tokens`, one count per block but the last;
    a count >= the tokens present keeps them all) and the graph keeps the top tokens by
    `ranks_by` (a block output's name), protected ones first, in their original order:
    runtime/pruning.py's rule, for batch 1 as the runtime prunes. With one unpadded row, sums rank
    as the block outputs' means do, in fewer nodes: on a CPU at a few dozen tokens the graph's time
    is as much per node as per token.

    The score is known once a block's attention has run, and everything after attention works
    token by token, so the block's output projection and feed-forward (three quarters of its
    multiply-adds) run on the kept tokens only: the same result as pruning the block's output.
    """

    def __init__(self, embed: EmbedSegment, blocks: list[EncoderBlock], head: nn.Module,
                 ranks_by: str = "token_importance"):
        super().__init__()
        self.embed, self.blocks, self.head = embed, nn.ModuleList(blocks), head
        self.ranks_by = ranks_by

    def _score(self, probs: torch.Tensor) -> torch.Tensor:
        """Per token of the single row, ranked as the block output of that name ranks it (sums
        instead of means: same order, fewer nodes)."""
        if self.ranks_by == "cls_attention":
            return probs[0, :, 0].sum(dim=0)
        return probs[0].sum(dim=(0, 1))

    def forward(self, input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        token_type_ids, attention_bias, protected, keep_tokens = rest if len(rest) == 4 else (None, *rest)
        hidden = self.embed(input_ids, token_type_ids)
        for i, block in enumerate(self.blocks):
            context, probs = block.attention(hidden, attention_bias)
            if i < len(self.blocks) - 1:
                score = self._score(probs) + protected[0] * PROTECTED_SCORE
                keep = torch.minimum(keep_tokens[i], torch.tensor(hidden.shape[1]))
                index = torch.sort(torch.topk(score, keep).indices).values
                hidden, context = hidden[:, index], context[:, index]
                attention_bias, protected = attention_bias[:, index], protected[:, index]
            hidden = block.per_token(hidden, context)
        return self.head(hidden, attention_bias)


class Stage(nn.Module):
    """Consecutive segments up to the next decision, as one graph: [embed ->] blocks -> exit or head.

    The runtime decides only after an exit or before the head; between decisions it used to call a
    block graph and then an exit graph, each call paying onnxruntime's per-run cost and a hand-off
    through numpy (0.14-0.17 ms per exit call on MiniLM here, a fifth of a block). A stage outputs
    what the last block outputs (the next hidden state and both token scores, for pruning) and the
    tail's output, or only the head's output when the tail is the head.

    scores=False leaves the token scores out: a run that does not prune after this stage needs only
    the hidden state, and onnxruntime computes every node of a graph whatever outputs are asked for,
    so the scores (the head-mean of the attention probabilities and two reductions) cost 5-10% of an
    int8 stage at SST-2 lengths unless the graph itself lacks them (bench/RESULTS-archive.md).
    """

    def __init__(self, embed: EmbedSegment | None, blocks: list[EncoderBlock], tail: nn.Module, tail_is_head: bool,
                 scores: bool = True):
        super().__init__()
        self.embed, self.blocks, self.tail = embed, nn.ModuleList(blocks), tail
        self.tail_is_head, self.scores = tail_is_head, scores

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.embed is not None:
            input_ids, *rest = inputs
            token_type_ids, attention_bias = rest if len(rest) == 2 else (None, rest[0])
            hidden = self.embed(input_ids, token_type_ids)
        else:
            hidden, attention_bias = inputs
        for block in self.blocks:
            hidden, importance, cls_attention = block(hidden, attention_bias)
        out = self.tail(hidden, attention_bias)
        if self.tail_is_head:
            return (out,)
        return (hidden, importance, cls_attention, out) if self.scores else (hidden, out)
