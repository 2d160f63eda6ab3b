"""The analytic FLOPs of a Hugging Face CausalLM step (modlab.routing.hf_flops) equal what torch's
FlopCounterMode counts, dense and routed, for families whose layers differ (Llama's SwiGLU, Phi's
parallel attention + MLP, Phi-3's fused projections, Qwen3 / Gemma 3 with head_dim != d / heads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modlab.models.hf_tiny import tiny_causal_lm
from modlab.routing.hf_flops import forward_flops, train_step_flops
from modlab.routing.hf_routed_layer import install_hf_routing
from modlab.routing.trace import record_routing

transformers = pytest.importorskip("transformers")

CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    vocab_size=64,
    max_position_embeddings=64,
    attn_implementation="eager",  # every matmul visible to the counter (it counts none for CPU SDPA)
)
EXTRA = {
    "llama": {},
    "phi": {},
    "phi3": {},
    "qwen3": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16},
}


def model_of(family: str):
    return tiny_causal_lm(family, 0, **CONFIG, **EXTRA[family]).train()


def step(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, use_cache=False).logits
    F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()


@pytest.mark.parametrize("family", EXTRA)
@pytest.mark.parametrize("layers", [{}, {1: [0.25], 3: [0.5]}], ids=["dense", "routed"])
def test_training_flops_equal_torchs_flop_counter(family, layers):
    from torch.utils.flop_counter import FlopCounterMode

    model = model_of(family)
    install_hf_routing(model, layers)
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, record_routing(model) as trace:
        step(model, ids)
    groups = trace.flops_groups()[0]
    assert train_step_flops(model, *ids.shape, groups) == counter.get_total_flops()
    assert train_step_flops(model, *ids.shape, groups) == 3 * forward_flops(model, *ids.shape, groups)
    if layers:
        assert groups == {1: [(3, 4)], 3: [(3, 8)]}  # ceil(0.25 * 16), ceil(0.5 * 16) tokens a row
        assert forward_flops(model, *ids.shape, groups) < forward_flops(model, *ids.shape)
