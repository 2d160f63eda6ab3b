"""A tiny Llama-style causal LM over UTF-8 bytes (RMSNorm, RoPE, SwiGLU) with a KV cache.

It is the pretrained base that Router-Tuning (modlab.mindskip) starts from. The blocks are the
transformer's own (same parameter names, same maths, the same per-layer KV cache,
modlab.models.kv_cache), so prefill + one-token decode steps give the logits of a full forward.
A layer whose attention never runs (MindSkip closed it at prefill) keeps no entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from modlab.models.config import ModelConfig
from modlab.models.kv_cache import KVCache
from modlab.models.omni_attention import causal_mask
from modlab.models.transformer import Attention, Block, Transformer

BYTE_VOCAB = 256


class LMBlock(Block):
    """The pre-norm block with LayerDrop on its attention sublayer; returns its residual update f(x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # built again, as when the LM had its own cached attention class: the initialisation draws
        # the same random numbers as before (same weights from a seed; the pinned losses hold)
        self.attn = Attention(cfg)
        self.attn_layer_drop = cfg.attn_layer_drop

    def attn_update(self, x, positions, attn_mask, route=None, cache=None) -> torch.Tensor:
        a = super().attn_update(x, positions, attn_mask, route, cache)
        if self.training and self.attn_layer_drop > 0:
            # whole rows skip this attention sublayer; no rescaling, so a kept sublayer computes
            # at inference exactly what it computed in training
            keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.attn_layer_drop
            a = a * keep.to(a.dtype)
        return a


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

    def attention_out_norm_slots(self) -> None:
        """None: each block adds its attention's output to the stream as it is (no output norm)."""
        return None

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

    def hidden_states(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The final (normalised) hidden states (B, T, d) of a full forward; `logits_of` maps them
        to logits (modlab.models.token_nll computes the loss a chunk of tokens at a time)."""
        return self._run(ids, valid, None, head=False)

    def logits_of(self, h: torch.Tensor) -> torch.Tensor:
        return self.transformer.head(h)

    def head_parameters(self):
        """The parameters `logits_of` uses (whether the loss may skip their gradients)."""
        return self.transformer.head.parameters()

    def forward(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab). With a cache, `ids` continue the cached tokens (no padding);
        without one, `valid` (B, T) marks real tokens (right padding). `last_only`: the last
        position's logits alone (B, 1, vocab), what a generation step needs."""
        if last_only:
            return self.logits_of(self._run(ids, valid, cache, head=False)[:, -1:])
        return self._run(ids, valid, cache)

    def _run(self, ids, valid, cache: KVCache | None, head: bool = True) -> torch.Tensor:
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + T, device=ids.device).expand(B, T)
        # with a cache the mask is among the new tokens only: they see every cached entry too
        valid = valid if valid is not None and cache is None else torch.ones_like(ids, dtype=torch.bool)
        out = self.transformer(ids, causal_mask(valid), positions, cache=cache, head=head)
        if cache is not None:
            cache.length += T
        return out
