"""Greedy decoding of a transformers CausalLM, with its KV cache or by recomputing the prefix.

Under `threshold_routing` a routed layer (modlab.routing.hf_routed_layer) decides per token,
from that token's own hidden state, whether it runs; with the cache only the tokens that ran a
layer have K/V there (the compact cache), and decoding with it must equal recomputing the whole
prefix for every new token, token for token. Positions are passed explicitly, so no layer's
cache length ever shifts them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def greedy_decode(
    model: nn.Module, ids: torch.Tensor, n_new: int, use_cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The n_new greedy tokens after `ids` (B, T) (rows of equal length, no padding), the logits
    each was chosen from (B, n_new, vocab), and the cache (None when recomputing)."""
    B, T = ids.shape
    tokens, step_logits = [], []
    if not use_cache:
        seq = ids
        for _ in range(n_new):
            logits = model(input_ids=seq, use_cache=False, logits_to_keep=1).logits[:, -1]
            step_logits.append(logits)
            tokens.append(logits.argmax(-1, keepdim=True))
            seq = torch.cat([seq, tokens[-1]], 1)
        return torch.cat(tokens, 1), torch.stack(step_logits, 1), None
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = torch.arange(T, device=ids.device).expand(B, T)
    # the last position's logits only (a prefill's other positions would cost T x the head)
    logits = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    for step in range(n_new):
        step_logits.append(logits)
        tokens.append(logits.argmax(-1, keepdim=True))
        if step == n_new - 1:
            break
        position = torch.full((B, 1), T + step, device=ids.device)
        logits = model(input_ids=tokens[-1], position_ids=position, cache=cache, use_cache=True).logits[:, -1]
    return torch.cat(tokens, 1), torch.stack(step_logits, 1), cache
