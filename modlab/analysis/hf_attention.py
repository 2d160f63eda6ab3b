"""Queries, keys and attention probabilities of a Hugging Face causal LM, read where its own
attention computes them (for `modlab analyze attention` and `redundancy`).

While `hf_attention_capture` is active the model runs with eager attention, and the modeling
module's `eager_attention_forward` (which every supported family's attention calls with its
final query and key states) is wrapped: each call hands over the queries and keys exactly as the
model attends with them (after its own RoPE, partial RoPE for Phi, and Qwen3 / Gemma 3's q / k
norms), the key heads repeated to the query heads as grouped-query attention repeats them, the
mask as booleans (causal, padding and sliding windows included) and the probabilities the model
computed (its scaling and Gemma 2's soft-capping included). Nothing of a family is re-implemented.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from modlab.hf_layer_map import decoder_layers


def _attention_modules(lm) -> dict[int, int]:
    """{id(attention module): layer index}, looking through routed layers and MindSkip gates."""
    out = {}
    for i, layer in enumerate(decoder_layers(lm.hf, lm.family)):
        attn = getattr(getattr(layer, "block", layer), lm.family.attention)
        attn = getattr(attn, "attn", attn)  # MindSkip's GatedAttention wraps the attention
        out[id(attn)] = i
    return out


def _bool_mask(mask: torch.Tensor | None, q_len: int, k_len: int, device) -> torch.Tensor:
    if mask is None:  # no mask: causal
        return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]
    mask = mask[..., :k_len]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


@contextmanager
def hf_attention_capture(lm, fn: Callable) -> Iterator[None]:
    """While active, every forward of `lm` (an HFCausalLM) calls fn(layer, q, k, mask, probs,
    head_dim) per layer (see modlab.analysis.subject.layer_attention)."""
    hf = lm.hf
    layer_of = _attention_modules(lm)
    modules = {sys.modules[type(a).__module__] for a in hf.modules() if id(a) in layer_of}
    originals = {m: m.eager_attention_forward for m in modules}
    implementation = hf.config._attn_implementation

    def wrap(original):
        def eager_attention_forward(module, query, key, value, attention_mask, *args, **kwargs):
            out, weights = original(module, query, key, value, attention_mask, *args, **kwargs)
            i = layer_of.get(id(module))
            if i is not None:
                k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
                mask = _bool_mask(attention_mask, query.shape[-2], key.shape[-2], query.device)
                fn(i, query, k, mask, lambda: weights, query.shape[-1])
            return out, weights

        return eager_attention_forward

    hf.set_attn_implementation("eager")
    for m, original in originals.items():
        m.eager_attention_forward = wrap(original)
    try:
        yield
    finally:
        for m, original in originals.items():
            m.eager_attention_forward = original
        hf.set_attn_implementation(implementation)
