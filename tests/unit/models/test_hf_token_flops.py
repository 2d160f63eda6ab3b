"""HFCausalLM.token_flops() (what MindSkip's FLOPs-predicted speed-up is computed from) counts the
modules a family's layer really has: prefill and cached decode FLOPs equal torch's
FlopCounterMode per family (Phi's MLP has two matrices, Llama's three, Phi-3 fuses q, k, v)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modlab.hf_layer_map import HF_FAMILIES
from modlab.mindskip.gate import MindSkip
from modlab.mindskip.inference import generation_flops
from modlab.models.hf_causal_lm import HFCausalLM

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
    "phi3": {"pad_token_id": 0},
    "qwen3": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16},
}


def hf_lm(family: str) -> HFCausalLM:
    entry = HF_FAMILIES[family]
    config = getattr(transformers, entry.config_class)(**CONFIG, **EXTRA[family])
    torch.manual_seed(0)
    return HFCausalLM(getattr(transformers, entry.causal_lm_class)(config).eval(), "tiny")


@pytest.mark.parametrize("family", EXTRA)
@pytest.mark.parametrize("closed", [[], [1, 2]], ids=["open", "closed"])
def test_generation_flops_equal_torchs_flop_counter_per_family(family, closed):
    lm = hf_lm(family)
    skip = MindSkip(lm, [1, 2])
    prompt = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    open_layers = [i not in closed for i in range(lm.n_layer)]
    prefill, decode = generation_flops(lm.token_flops(), open_layers, 12, 3)
    cache = lm.new_cache()
    with torch.no_grad(), skip.variant(routers=False, closed=closed):
        with FlopCounterMode(display=False) as fc:
            lm(prompt, cache=cache, last_only=True)  # as generation prefills: the last position's logits
        assert fc.get_total_flops() == prefill
        with FlopCounterMode(display=False) as fc:
            for t in range(2):
                lm(prompt[:, t : t + 1], cache=cache)
        assert fc.get_total_flops() == decode
