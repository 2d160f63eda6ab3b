"""A Llama-style transformer (RMSNorm, RoPE, SwiGLU) read top to bottom.

Blocks return their *delta* f(x) = attn-then-MLP update, not x + f(x): the model adds it. That
is what a routed block needs to scale (x + r * f(x)), so routing can wrap any block unchanged.
Positions are explicit (B, T) tensors so a routed block can pass the *original* positions of
the tokens it kept; the attention mask is an explicit (B, 1, T, T) boolean (True = may attend).
With a KV cache (modlab.models.kv_cache) a call's tokens also see every earlier cached entry, and
each layer stores the K/V of the tokens `route.valid` marks: a routed block hands its inner block
the kept tokens only, so a token that skipped a layer leaves no entry there.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.models.config import ModelConfig
from modlab.models.kv_cache import KVCache, LayerKV


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 for stability under bf16 autocast
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


_INV_FREQ: dict[tuple, torch.Tensor] = {}


def rope_inv_freq(head_dim: int, base: float, device) -> torch.Tensor:
    """RoPE's inverse frequencies, computed once per (head_dim, base, device): a decode step asks
    in every layer, and rebuilding them (arange, pow, div) was a third of its RoPE ops."""
    key = (head_dim, float(base), torch.device(device))
    if key not in _INV_FREQ:
        exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
        _INV_FREQ[key] = 1.0 / (base**exponents)
    return _INV_FREQ[key]


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for the given (B, T) positions, shaped (B, 1, T, head_dim // 2)."""
    inv_freq = rope_inv_freq(head_dim, base, positions.device)
    angles = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the two halves of the head dimension (GPT-NeoX / Llama layout).
    In fp32: bf16 elementwise arithmetic is no faster on CPU and loses precision."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) over the allowed keys, (B, H, T, T): also what the analyses read."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # scale the smaller tensor
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v.

    On CPU the explicit form is used: with a boolean mask, PyTorch's CPU flash kernel ran
    fwd+bwd ~3x slower than this under bf16 autocast (B=80, T=111, head_dim=32 on 2 cores).
    Elsewhere scaled_dot_product_attention picks a fused kernel."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    probs = attention_probs(q, k, mask).type_as(v)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs @ v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.rope_base = cfg.n_head, cfg.head_dim, cfg.rope_base
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def qk(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries and keys and the values, each (B, H, T, head_dim)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_base)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        attn_mask: torch.Tensor,
        cache: LayerKV | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`cache`: this layer's KV cache; the `keep` tokens (B, T; None: all) are added to it and
        the queries also attend to its earlier entries."""
        B, T, C = x.shape
        q, k, v = self.qk(x, positions)
        if cache is not None and T == 1:  # a decode step: written and masked by each row's length
            k, v, attn_mask = cache.step(k, v, keep)
        elif cache is not None:
            k, v, attn_mask = cache.extend(k, v, attn_mask, keep)
        y = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block that returns its residual update f(x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_attn = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_mlp = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor, route=None, cache=None
    ) -> torch.Tensor:
        """`route` is for routed wrappers (same call for every block); a dense block reads only
        `route.valid` with a cache (a LayerKV): the tokens whose K/V it stores (all if no route)."""
        a = self.attn_update(x, positions, attn_mask, route, cache)
        m = self.drop(self.mlp(self.norm_mlp(x + a)))
        return a + m

    def attn_update(self, x, positions, attn_mask, route=None, cache=None) -> torch.Tensor:
        """The attention sublayer's residual update."""
        keep = route.valid if cache is not None and route is not None else None
        return self.drop(self.attn(self.norm_attn(x), positions, attn_mask, cache, keep))


class Transformer(nn.Module):
    """Token embedding, a stack of blocks, final norm and an untied output head."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, block_cls: type[Block] = Block):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(block_cls(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2 style: scale the residual projections by depth so the stream starts well-behaved
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(
        self,
        ids: torch.Tensor,
        attn_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        extra_embed: torch.Tensor | None = None,
        route=None,
        cache: KVCache | None = None,
        head: bool = True,
    ) -> torch.Tensor:
        """Logits (B, T, vocab); `head=False`: the final hidden states (B, T, d). `extra_embed`
        (B, T, d) is added to the token embeddings; `route` (a RouteInfo) is handed to every block
        for routed ones; with a `cache` the tokens continue the cached ones (then `attn_mask` is
        among this call's tokens only)."""
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        x = self.embed(ids)
        if extra_embed is not None:
            x = x + extra_embed
        for i, block in enumerate(self.blocks):
            x = x + block(x, positions, attn_mask, route, cache=cache.layers[i] if cache is not None else None)
        return self.head(self.norm(x)) if head else self.norm(x)
