"""The PyTorch modules that become a decoder package's graphs (Llama family).

Blocks are rebuilt from the model's own parameters (not called through Hugging Face) because the
package contract needs what HF's Cache objects do not export cleanly: the KV cache as plain tensors
in and out of every block (`past_key`/`past_value` -> `present_key`/`present_value`, keys stored
after RoPE, as HF stores them), explicit `position_ids` (a pruned cache keeps the original
positions of the tokens it keeps), and an additive `attention_bias` over all cached and new
positions (0 attend, PAD_BIAS never), so the runtime can pad batches and drop cache entries
physically. Causality needs no input: the new tokens follow the cache, so query i may see key j
exactly when j <= past_length + i.

Each block also returns `attention_received`: per cache entry, the attention it received, averaged
over heads and over the new tokens that can see it (causality hides later entries from earlier
queries, so a plain mean would favour old tokens). The runtime drops the prompt tokens that receive
least before the next blocks during a long prefill (AIM-style pruning inside the layer stack).

The head is the final RMSNorm and the LM head, applied through a 2-D `linear` so that the exported
weight keeps the embedding's layout; with tied embeddings the package then stores it once
(shared_weights.py). Exits are this same head applied to an intermediate block's output (LayerSkip's
shared exit), so an exit costs no bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...manifest import PAD_BIAS, VALID_BIAS_FLOOR


@dataclass(frozen=True)
class DecoderShape:
    num_blocks: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    tied_embeddings: bool


def decoder_shape(model: nn.Module) -> DecoderShape:
    config = model.config
    heads = int(config.num_attention_heads)
    return DecoderShape(
        num_blocks=int(config.num_hidden_layers), hidden_size=int(config.hidden_size), num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        vocab_size=int(config.vocab_size), max_positions=int(config.max_position_embeddings),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def cache_names(kind: str, blocks: range) -> list[str]:
    """A span's cache inputs ("past") or outputs ("present"), named after each block it covers."""
    return [f"{kind}_{part}_{b:02d}" for b in blocks for part in ("key", "value")]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(nn.Module):
    """cos/sin of the positions, as HF's LlamaRotaryEmbedding computes them (default and scaled RoPE)."""

    def __init__(self, rotary: nn.Module):
        super().__init__()
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)
        self.scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [batch, 1, sequence, head_dim]
        return angles.cos() * self.scaling, angles.sin() * self.scaling


def causal_bias(attention_bias: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[batch, 1, new, total] additive mask: key j is visible to new token i when j <= past + i."""
    total = attention_bias.shape[1]
    past = total - new_tokens
    keys = torch.arange(total, device=attention_bias.device)
    queries = torch.arange(new_tokens, device=attention_bias.device) + past
    visible = keys[None, :] <= queries[:, None]
    causal = torch.where(visible, torch.zeros((), dtype=torch.float32), torch.full((), PAD_BIAS))
    return causal[None, None] + attention_bias[:, None, None, :]


class DecoderBlock(nn.Module):
    def __init__(self, layer: nn.Module, rotary: nn.Module, shape: DecoderShape):
        super().__init__()
        attention = layer.self_attn
        self.q, self.k, self.v, self.o = attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj
        self.attention_norm, self.mlp_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.mlp = layer.mlp
        self.rotary = Rotary(rotary)
        self.heads, self.kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], heads, self.head_dim).transpose(1, 2)

    def new_key_value(self, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._split(self.k(normed), self.kv_heads)
        return key * cos + _rotate_half(key) * sin, self._split(self.v(normed), self.kv_heads)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_bias: torch.Tensor,
                past_key: torch.Tensor, past_value: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, new = hidden.shape[0], hidden.shape[1]
        cos, sin = self.rotary(position_ids)
        normed = self.attention_norm(hidden)
        query = self._split(self.q(normed), self.heads)
        query = query * cos + _rotate_half(query) * sin
        key, value = self.new_key_value(normed, cos, sin)
        key = torch.cat((past_key, key), dim=2)
        value = torch.cat((past_value, value), dim=2)
        group = self.heads // self.kv_heads
        total = key.shape[2]
        key_all = key[:, :, None].expand(batch, self.kv_heads, group, total, self.head_dim).reshape(batch, self.heads, total, self.head_dim)
        value_all = value[:, :, None].expand(batch, self.kv_heads, group, total, self.head_dim).reshape(batch, self.heads, total, self.head_dim)
        mask = causal_bias(attention_bias, new)
        probabilities = torch.softmax(query @ key_all.transpose(-1, -2) * (self.head_dim ** -0.5) + mask, dim=-1)
        attended = (probabilities @ value_all).transpose(1, 2).reshape(batch, new, -1)
        seen_by = (mask > VALID_BIAS_FLOOR).float().sum(2).squeeze(1).clamp_min(1.0)  # [batch, total]
        received = probabilities.mean(1).sum(1) / seen_by
        hidden = hidden + self.o(attended)
        return hidden + self.mlp(self.mlp_norm(hidden)), key, value, received


class DecoderKeyValue(nn.Module):
    """Only a block's keys and values for new tokens: what a per-token early exit must still write
    for the blocks it skips (CALM's state propagation), at a fraction of the block's cost."""

    def __init__(self, block: DecoderBlock):
        super().__init__()
        self.block = block

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, past_key: torch.Tensor,
                past_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.block.rotary(position_ids)
        key, value = self.block.new_key_value(self.block.attention_norm(hidden), cos, sin)
        return torch.cat((past_key, key), dim=2), torch.cat((past_value, value), dim=2)


class DecoderEmbed(nn.Module):
    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)


class DecoderHead(nn.Module):
    def __init__(self, norm: nn.Module, lm_head: nn.Linear):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head
        if lm_head.bias is None:  # a 2-D linear with a bias exports as Gemm(transB=1): the weight keeps its layout
            self.register_buffer("zero_bias", torch.zeros(lm_head.out_features), persistent=False)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the logits, and the normed states they are a product of: a lowered head's screen
        rescores its few candidate rows from these (runtime/decoder/head_screen.py)."""
        batch, new = hidden.shape[0], hidden.shape[1]
        normed = self.norm(hidden)
        flat = normed.reshape(batch * new, hidden.shape[2])
        bias = self.lm_head.bias if self.lm_head.bias is not None else self.zero_bias
        logits = nn.functional.linear(flat, self.lm_head.weight, bias)
        return logits.reshape(batch, new, logits.shape[-1]), normed


class DecoderSpan(nn.Module):
    """Consecutive blocks in one graph: no decision falls between them, so one call does."""

    def __init__(self, blocks: list[DecoderBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_bias: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> next hidden, each block's present key and value, the last block's attention_received."""
        presents: list[torch.Tensor] = []
        received = attention_bias
        for i, block in enumerate(self.blocks):
            hidden, key, value, received = block(hidden, position_ids, attention_bias, past[2 * i], past[2 * i + 1])
            presents += [key, value]
        return (hidden, *presents, received)


@dataclass
class DecoderModules:
    shape: DecoderShape
    embed: DecoderEmbed
    blocks: list[DecoderBlock]
    head: DecoderHead

    def key_value(self, index: int) -> DecoderKeyValue:
        return DecoderKeyValue(self.blocks[index])


def decoder_modules(model: nn.Module) -> DecoderModules:
    shape = decoder_shape(model)
    inner = model.model
    blocks = [DecoderBlock(layer, inner.rotary_emb, shape) for layer in inner.layers]
    return DecoderModules(shape=shape, embed=DecoderEmbed(inner.embed_tokens), blocks=blocks,
                          head=DecoderHead(inner.norm, model.lm_head))


def empty_cache(shape: DecoderShape, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    empty = torch.zeros(batch, shape.num_kv_heads, 0, shape.head_dim)
    return empty, empty.clone()


class DecoderMonolith(nn.Module):
    """Embedding, every block and the head in one graph: the plain single-graph baseline the
    benchmark compares the segmented package against."""

    def __init__(self, modules: DecoderModules):
        super().__init__()
        self.embed, self.span, self.head = modules.embed, DecoderSpan(modules.blocks), modules.head

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_bias: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden, *presents, _ = self.span(self.embed(input_ids), position_ids, attention_bias, *past)
        return (self.head(hidden[:, -1:])[0], *presents)
