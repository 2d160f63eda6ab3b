"""Analytic FLOPs of a training step (forward + backward), routing-aware.

Counts the matrix multiplications, as torch.utils.flop_counter.FlopCounterMode does (2 FLOPs per
multiply-add; elementwise work is ignored), on the shapes that really run: B rows padded to T
tokens in a dense layer, and B rows of K = max kept tokens in a routed layer (unused slots of
rows that keep fewer tokens are computed too, so they are counted). Backward costs twice the
forward (one matmul for the input gradient, one for the weight gradient), so a step is 3x.
"""

from __future__ import annotations

from modlab.models.config import ModelConfig


def block_forward_flops(cfg: ModelConfig, B: int, T: int) -> int:
    """One transformer block on B rows of T tokens."""
    d, h = cfg.d_model, cfg.hidden
    linear = 2 * B * T * d * (3 * d + d + 2 * h + h)  # qkv, out proj, SwiGLU gate/up, down
    attention = 2 * 2 * B * T * T * d  # q k^T and p v over all heads
    return linear + attention


def router_forward_flops(B: int, T: int, router_weights: int) -> int:
    """Routers (and a causal-decision predictor) are matmuls over every token: 2 FLOPs per weight."""
    return 2 * B * T * router_weights


def model_forward_flops(
    cfg: ModelConfig,
    vocab_size: int,
    B: int,
    T: int,
    routed: dict[int, list[tuple[int, int]]] | None = None,
    router_weights: dict[int, int] | None = None,
) -> int:
    """Forward FLOPs. `routed[layer]` lists the (rows, K) batched calls a routed layer made
    (rows of a group each run K tokens); other layers run all B rows at T tokens.
    `router_weights[layer]`: weights of that layer's router (+ predictor), d_model by default."""
    routed, router_weights = routed or {}, router_weights or {}
    total = 2 * B * T * cfg.d_model * vocab_size  # output head
    for layer in range(cfg.n_layer):
        if layer in routed:
            total += sum(block_forward_flops(cfg, rows, k) for rows, k in routed[layer])
            total += router_forward_flops(B, T, router_weights.get(layer, cfg.d_model))
        else:
            total += block_forward_flops(cfg, B, T)
    return total


def train_step_flops(
    cfg: ModelConfig,
    vocab_size: int,
    B: int,
    T: int,
    routed: dict[int, list[tuple[int, int]]] | None = None,
    router_weights: dict[int, int] | None = None,
) -> int:
    return 3 * model_forward_flops(cfg, vocab_size, B, T, routed, router_weights)


def traced_train_step_flops(cfg: ModelConfig, vocab_size: int, trace, B: int, T: int) -> int:
    """Training FLOPs of a forward on (B, T) whose routing `trace` recorded (modlab.routing.trace:
    the batched calls each routed layer really made)."""
    groups, router_weights = trace.flops_groups()
    return train_step_flops(cfg, vocab_size, B, T, groups, router_weights)
