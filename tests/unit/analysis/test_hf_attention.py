"""The attention-level analyses on Hugging Face LMs (modlab.analysis.hf_attention, the Subject of
modlab.analysis.subject.lm_subject), on tiny random models of every supported family saved to a
directory: the captured queries and keys reproduce the model's own attention probabilities, key
heads are repeated for grouped-query attention, RoPE is the model's own, capturing changes no
output, ARank sees a zeroed query projection, and each layer's residual branches add up to its
output (Phi's parallel MLP, Gemma 2 / 3's branch norms)."""

from __future__ import annotations

import pytest
import torch
from helpers import HF_FAMILIES, save_tiny_hf

from modlab.analysis.arank import arank_analysis
from modlab.analysis.subject import layer_attention, layer_sublayers, lm_subject
from modlab.models.hf_causal_lm import load_hf_causal_lm

pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=HF_FAMILIES)
def lm(request, tmp_path_factory):
    model, _ = load_hf_causal_lm(str(save_tiny_hf(tmp_path_factory.mktemp(request.param) / "m", request.param)))
    return model


def batch(B=2, T=10):
    ids = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 7:] = False  # right padding
    labels = torch.full((B, T), -100)
    return {"ids": ids, "valid": valid, "labels": labels}


def test_captured_queries_and_keys_reproduce_the_models_attention(lm):
    subject, b = lm_subject(lm), batch()
    config = lm.hf.config
    seen = {}
    with torch.no_grad():
        plain = lm(b["ids"], valid=b["valid"])
        with layer_attention(subject, lambda i, q, k, mask, probs, d: seen.__setitem__(i, (q, k, mask, probs(), d))):
            captured = lm(b["ids"], valid=b["valid"])
    assert sorted(seen) == list(range(lm.n_layer))
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-4)  # eager while capturing, same function
    assert lm.hf.config._attn_implementation == plain_impl(lm)  # and put back
    softcap = getattr(config, "attn_logit_softcapping", None)
    for i, (q, k, mask, probs, d) in seen.items():
        assert q.shape == k.shape == (2, config.num_attention_heads, 10, d)  # key heads repeated (GQA)
        attn = getattr(lm.decoder_layers()[i], lm.family.attention)
        scores = (q @ k.transpose(-2, -1)) * attn.scaling
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        want = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        valid_q = b["valid"][:, None, :, None]
        torch.testing.assert_close(probs * valid_q, want * valid_q, rtol=1e-5, atol=1e-6)
        assert not mask[1, 0, 8, 8] or mask[1, 0, 8, :7].all()  # padding keys are masked for real queries
        assert not mask[1, 0, 5, 8]


def plain_impl(lm) -> str:
    return "eager" if lm.family.model_type == "gemma2" else "sdpa"


def test_queries_carry_the_models_own_rope():
    """Llama's q for a token is q_proj(norm(x)) rotated by the model's cos / sin at its position."""
    import tempfile
    from pathlib import Path

    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm, _ = load_hf_causal_lm(str(save_tiny_hf(Path(tempfile.mkdtemp()) / "llama")))
    ids = torch.randint(0, 256, (1, 9))
    inputs, seen = {}, {}
    layer = lm.decoder_layers()[1]
    layer.register_forward_pre_hook(
        lambda m, a, kw: inputs.update(kw, x=a[0] if a else kw["hidden_states"]), with_kwargs=True
    )
    with torch.no_grad(), layer_attention(lm_subject(lm), lambda i, q, k, mask, p, d: seen.__setitem__(i, q)):
        lm(ids)
    attn, cfg = layer.self_attn, lm.hf.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        q = attn.q_proj(layer.input_layernorm(inputs["x"])).view(1, 9, -1, hd).transpose(1, 2)
        cos, sin = inputs["position_embeddings"]
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    torch.testing.assert_close(seen[1], q)


def query_weights(attn, n_q: int) -> list[torch.Tensor]:
    """The parameters that make the queries: q_proj, or the query rows of Phi-3's fused qkv_proj."""
    proj = getattr(attn, "q_proj", None)
    if proj is not None:
        return [p for p in (proj.weight, proj.bias) if p is not None]
    return [attn.qkv_proj.weight[:n_q]] + ([attn.qkv_proj.bias[:n_q]] if attn.qkv_proj.bias is not None else [])


def test_arank_bound_and_a_zeroed_query_projection(lm):
    subject, cfg = lm_subject(lm), lm.hf.config
    d = getattr(cfg, "head_dim", None) or lm.d_model // cfg.num_attention_heads
    attn = getattr(lm.decoder_layers()[2], lm.family.attention)
    weights = query_weights(attn, cfg.num_attention_heads * d)
    saved = [w.detach().clone() for w in weights]
    try:
        with torch.no_grad():
            for w in weights:
                w.zero_()
        rows = {r["layer"]: r for r in arank_analysis(subject, {"lm": [batch(T=24)]}, 1e-6)}
    finally:
        with torch.no_grad():
            for w, v in zip(weights, saved):
                w.copy_(v)
    assert rows[2]["arank"] == 0  # Q = 0: Q K^T = 0 in every head
    for i in (0, 1, 3):  # random weights: full rank, the bound min(n, head_dim) for rows of 24 and 7 tokens
        assert rows[i]["arank_rel"] == pytest.approx(1.0)
        assert rows[i]["arank"] == pytest.approx((min(24, d) + min(7, d)) / 2)


def test_residual_branches_add_up_to_each_layers_output(lm):
    subject, b = lm_subject(lm), batch()
    branches, outputs = {}, {}
    hooks = [
        layer.register_forward_hook(
            lambda m, a, out, i=i: outputs.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i, layer in enumerate(subject.blocks)
    ]

    def read(i, s):
        after_attn = s.x + s.attn(s.x)
        branches[i] = after_attn + s.mlp(after_attn)

    with torch.no_grad(), layer_sublayers(subject, read):
        lm(b["ids"], valid=b["valid"])
    for h in hooks:
        h.remove()
    for i in range(lm.n_layer):
        torch.testing.assert_close(branches[i], outputs[i], rtol=1e-4, atol=1e-5)
