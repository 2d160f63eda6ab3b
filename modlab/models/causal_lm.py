"""A tiny Llama-style causal LM over UTF-8 bytes (RMSNorm, RoPE, SwiGLU) with a KV cache.

It is the pretrained base that Router-Tuning (modlab.mindskip) starts from. The blocks are the
transformer's own (same parameter names, same maths); only the attention learns to append its
keys and values to a per-layer cache, so prefill + one-token decode steps give the logits of a
full forward. A layer whose attention never runs (MindSkip closed it at prefill) keeps no entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from modlab.models.config import ModelConfig
from modlab.models.omni_attention import causal_mask
from modlab.models.transformer import Attention, Block, Transformer, attend

BYTE_VOCAB = 256


class LayerKV:
    """One layer's keys and values, (B, H, T, head_dim), in a buffer that doubles when full
    (torch.cat on every decode step would copy the whole cache per token)."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.length + k.shape[2]
        if self.k is None or n > self.k.shape[2]:
            size = max(n, 2 * (self.k.shape[2] if self.k is not None else 0), 64)
            grown_k = k.new_empty(*k.shape[:2], size, k.shape[3])
            grown_v = v.new_empty(*v.shape[:2], size, v.shape[3])
            if self.k is not None:
                grown_k[:, :, : self.length] = self.k[:, :, : self.length]
                grown_v[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = grown_k, grown_v
        self.k[:, :, self.length : n] = k
        self.v[:, :, self.length : n] = v
        self.length = n
        return self.k[:, :, :n], self.v[:, :, :n]


class KVCache:
    """Per-layer caches plus the number of tokens seen (the next position)."""

    def __init__(self, n_layer: int):
        self.layers = [LayerKV() for _ in range(n_layer)]
        self.length = 0

    def entries(self) -> list[int]:
        """Tokens cached per layer (0 for a layer whose attention never ran)."""
        return [layer.length for layer in self.layers]


class CachedAttention(Attention):
    """The transformer's attention with an optional KV cache (same parameters)."""

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor, cache: LayerKV | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qk(x, positions)
        if cache is not None:
            k, v = cache.append(k, v)
        y = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class LMBlock(Block):
    """The pre-norm block with a cache-aware attention; returns its residual update f(x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.attn = CachedAttention(cfg)
        self.attn_layer_drop = cfg.attn_layer_drop

    def forward(self, x, positions, attn_mask, route=None, cache: LayerKV | None = None) -> torch.Tensor:
        a = self.drop(self.attn(self.norm_attn(x), positions, attn_mask, cache))
        if self.training and self.attn_layer_drop > 0:
            # whole rows skip this attention sublayer; no rescaling, so a kept sublayer computes
            # at inference exactly what it computed in training
            keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.attn_layer_drop
            a = a * keep.to(a.dtype)
        m = self.drop(self.mlp(self.norm_mlp(x + a)))
        return a + m


@dataclass(frozen=True)
class TokenFlops:
    """Matmul FLOPs per token (2 per multiply-add) of the parts of one layer and of the head,
    for the FLOPs-predicted speed-up of attention skipping."""

    attn_linear: int  # q, k, v and output projections
    attn_per_key: int  # q.k and p.v against one cached key
    mlp: int
    head: int


class CausalLM(nn.Module):
    attention_returns_tuple = False  # what the attention modules return (HF ones return a tuple)

    def __init__(self, cfg: ModelConfig, vocab_size: int = BYTE_VOCAB):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg, vocab_size, block_cls=LMBlock)

    @property
    def n_layer(self) -> int:
        return self.cfg.n_layer

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def vocab_size(self) -> int:
        return self.transformer.vocab_size

    def attention_slots(self) -> list[tuple[nn.Module, str]]:
        """(parent, attribute) of each layer's attention module: where MindSkip wraps it."""
        return [(block, "attn") for block in self.transformer.blocks]

    def decoder_layers(self) -> list[nn.Module]:
        """Each layer's module; its first argument is the residual stream x."""
        return list(self.transformer.blocks)

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layer)

    def token_flops(self) -> TokenFlops:
        d, h = self.cfg.d_model, self.cfg.hidden
        return TokenFlops(
            attn_linear=2 * d * 4 * d, attn_per_key=2 * 2 * d, mlp=2 * 3 * d * h, head=2 * d * self.vocab_size
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, ids: torch.Tensor, valid: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits (B, T, vocab). With a cache, `ids` continue the cached tokens (no padding);
        without one, `valid` (B, T) marks real tokens (right padding)."""
        t = self.transformer
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + T, device=ids.device).expand(B, T)
        if cache is None:
            mask = causal_mask(valid if valid is not None else torch.ones_like(ids, dtype=torch.bool))
        else:
            keys = torch.arange(start + T, device=ids.device)
            mask = (keys[None, :] <= positions[0, :, None]).expand(B, 1, T, start + T)
        x = t.embed(ids)
        for i, block in enumerate(t.blocks):
            x = x + block(x, positions, mask, cache=cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += T
        return t.head(t.norm(x))
