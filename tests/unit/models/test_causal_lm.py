"""The tiny causal LM: the KV cache reproduces the full forward, generation with and without the
cache agrees, padding is invisible, and the blocks are the transformer's own."""

from __future__ import annotations

import torch

from modlab.mindskip.inference import generate
from modlab.models.causal_lm import CausalLM
from modlab.models.config import ModelConfig
from modlab.models.transformer import Transformer

CFG = ModelConfig(arch="lm", d_model=32, n_layer=3, n_head=2)


def tiny_lm() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(CFG).eval()


def test_prefill_then_decode_steps_give_the_full_forward_logits():
    lm = tiny_lm()
    ids = torch.randint(0, 256, (2, 90))  # past the cache's first buffer of 64: it must grow
    with torch.no_grad():
        full = lm(ids)
        cache = lm.new_cache()
        parts = [lm(ids[:, :50], cache=cache)] + [lm(ids[:, t : t + 1], cache=cache) for t in range(50, 80)]
        parts.append(lm(ids[:, 80:], cache=cache))  # a chunk of several tokens after decoding
    torch.testing.assert_close(torch.cat(parts, 1), full)
    assert cache.length == 90 and cache.entries() == [90, 90, 90]


def test_cached_generation_equals_uncached_token_for_token():
    lm = tiny_lm()
    prompt = torch.randint(0, 256, (2, 7))
    cached, uncached = generate(lm, prompt, 12), generate(lm, prompt, 12, use_cache=False)
    assert cached.shape == (2, 19)
    assert torch.equal(cached, uncached)


def test_right_padding_does_not_change_the_real_tokens():
    lm = tiny_lm()
    ids = torch.randint(0, 256, (1, 10))
    padded = torch.cat([ids, torch.randint(0, 256, (1, 5))], 1)
    valid = torch.zeros(1, 15, dtype=torch.bool)
    valid[:, :10] = True
    with torch.no_grad():
        torch.testing.assert_close(lm(padded, valid=valid)[:, :10], lm(ids))


def test_blocks_are_the_transformers_blocks():
    """Same parameter names and shapes as the Show-o transformer's stack, and the same function."""
    lm = tiny_lm()
    ref = Transformer(CFG, 256)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in lm.transformer.state_dict().items()
    }
    ref.load_state_dict(lm.transformer.state_dict())
    ids = torch.randint(0, 256, (2, 12))
    from modlab.models.omni_attention import causal_mask

    with torch.no_grad():
        torch.testing.assert_close(lm(ids), ref(ids, causal_mask(torch.ones_like(ids, dtype=torch.bool))))


def test_attention_layer_drop_only_in_training():
    """attn_layer_drop: a training row either runs a layer's attention or skips it whole; eval
    runs every attention."""
    torch.manual_seed(0)
    lm = CausalLM(ModelConfig(arch="lm", d_model=32, n_layer=1, n_head=2, attn_layer_drop=0.5))
    block = lm.transformer.blocks[0]
    x = torch.randn(64, 5, 32)
    pos = torch.arange(5).expand(64, 5)
    from modlab.models.omni_attention import causal_mask

    mask = causal_mask(torch.ones(64, 5, dtype=torch.bool))
    with torch.no_grad():
        full = block.attn(block.norm_attn(x), pos, mask)
        without = block.mlp(block.norm_mlp(x))
        with_attn = full + block.mlp(block.norm_mlp(x + full))
        block.train()
        out = block(x, pos, mask)
        kept = torch.isclose(out, with_attn, atol=1e-6).all((1, 2))
        dropped = torch.isclose(out, without, atol=1e-6).all((1, 2))
    assert bool((kept ^ dropped).all()) and 10 < int(dropped.sum()) < 54
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x, pos, mask), with_attn)
