"""Analytic FLOPs of a Hugging Face CausalLM's step, with and without token routing, for every
family in modlab.hf_layer_map (what modlab.bench_hf predicts its speed-up from).

Counted as torch's FlopCounterMode counts them: matrix multiplications only, 2 FLOPs per
multiply-add. A decoder layer costs 2 * tokens * (the weights of every nn.Linear in it: q, k, v, o
and the MLP, whatever the family names them; Phi's parallel MLP and Phi-3's fused projections
included) plus its attention, q k^T and p v over all query heads as the full square of the tokens
it ran (SDPA and eager compute it whole, masked or not). A routed layer (HFRoutedLayer) costs that
for each batched call it made (a routing trace's `flops_groups()`: rows x kept tokens; see
modlab.routing.trace) plus its router and predictor,
which score every token. The output head costs 2 * tokens * d * vocab. A training step is counted
as forward + backward = 3 x forward (the backward of a matmul is two matmuls), as
modlab.flops and modlab.bench_hf count it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from modlab.hf_layer_map import decoder_layers, text_config
from modlab.routing.hf_routed_layer import HFRoutedLayer
from modlab.routing.topk import tokens_to_keep


def linear_weights(module: nn.Module) -> int:
    """Multiply-adds per token of every nn.Linear under `module`."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def query_width(config) -> int:
    """Query heads x head dim: the width of q k^T and p v."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head_dim


def layer_forward_flops(layer: nn.Module, config, rows: int, tokens: int) -> int:
    """One (unrouted) decoder layer on `rows` rows of `tokens` tokens."""
    return 2 * rows * tokens * linear_weights(layer) + 2 * 2 * rows * tokens * tokens * query_width(config)


def forward_flops(model: nn.Module, B: int, T: int, routed: dict[int, list[tuple[int, int]]] | None = None) -> int:
    """Forward FLOPs of a transformers CausalLM on B rows of T tokens; `routed`: what each routed
    layer ran ({layer: [(rows, K), ...]}, a routing trace's flops_groups()[0]), None: every layer dense."""
    config = text_config(model.config)
    total = 2 * B * T * config.hidden_size * config.vocab_size  # output head
    for i, layer in enumerate(decoder_layers(model)):
        if isinstance(layer, HFRoutedLayer):
            if routed is None:
                total += layer_forward_flops(layer.block, config, B, T)
                continue
            total += sum(layer_forward_flops(layer.block, config, rows, k) for rows, k in routed.get(i, []))
            total += 2 * B * T * layer.routing_weights()  # the router (and predictor) score every token
        else:
            total += layer_forward_flops(layer, config, B, T)
    return total


def train_step_flops(model: nn.Module, B: int, T: int, routed: dict[int, list[tuple[int, int]]] | None = None) -> int:
    """Forward + backward FLOPs of one training step (3 x forward)."""
    return 3 * forward_flops(model, B, T, routed)


def planned_flops_ratio(model: nn.Module, layer_caps: dict[int, float], workload: list[tuple[int, int]]) -> float:
    """Training FLOPs of a MoD plan on a (not yet routed) transformers LM over those of the dense
    step, for routing plans (modlab.analysis.plan_from_arank): `layer_caps` {layer: capacity} for
    every row of `workload` [(rows, tokens per row)] per training step (see planned_parts_flops_ratio)."""
    return planned_parts_flops_ratio(model, [(layer_caps, rows, n, n, 0) for rows, n in workload])


def planned_parts_flops_ratio(model: nn.Module, parts: list[tuple]) -> float:
    """Training FLOPs of a routing plan over the dense step's, the step made of `parts`, each
    (layer_caps {layer: capacity}, rows, tokens per row, routed tokens per row, tokens per row that
    always run[, forward FLOPs per row outside the decoder and head]): a planned layer runs
    k = ceil(C * routed) + always tokens of each row (as the routed layer computes k) plus a
    one-column router scoring every token (routing.causal=predictor adds its predictor's weights,
    not counted here); other layers run every token; the outside cost (e.g. Janus's vision encoder)
    is the same routed or not."""
    config = text_config(model.config)
    layers = decoder_layers(model)
    routed = dense = 0
    for layer_caps, rows, n, n_routed, always, *outside in parts:
        head = 2 * rows * n * config.hidden_size * config.vocab_size + rows * sum(outside)
        routed, dense = routed + head, dense + head
        for i, layer in enumerate(layers):
            block = layer.block if isinstance(layer, HFRoutedLayer) else layer
            full = layer_forward_flops(block, config, rows, n)
            dense += full
            cap = layer_caps.get(i, 1.0)
            if cap < 1.0:
                kept = tokens_to_keep(torch.tensor(cap, dtype=torch.float32), torch.tensor(float(n_routed)))
                k = int(kept) + always
                routed += layer_forward_flops(block, config, rows, k) + 2 * rows * n * config.hidden_size
            else:
                routed += full
    return routed / dense
