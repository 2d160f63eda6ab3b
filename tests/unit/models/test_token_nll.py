"""The LM loss without a batch's full-vocabulary logits (modlab.models.token_nll): the same NLL,
the same gradients, and the heads of every Hugging Face family equal to the model's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import HF_FAMILIES, save_tiny_hf

from modlab.data.tokens import IGNORE_INDEX
from modlab.models.token_nll import token_nll


def _problem(vocab: int = 50, d: int = 8, B: int = 3, T: int = 7):
    torch.manual_seed(0)
    head = torch.nn.Linear(d, vocab)
    h = torch.randn(B, T, d, requires_grad=True)
    labels = torch.randint(0, vocab, (B, T))
    labels[0, :3] = IGNORE_INDEX
    labels[2, -1] = IGNORE_INDEX
    return head, h, labels


@pytest.mark.parametrize("chunk_logits", [1 << 26, 50 * 4, 50])  # one chunk; 4 tokens a chunk; 1 token a chunk
def test_chunked_nll_and_its_gradients_equal_cross_entropy_on_full_logits(chunk_logits: int):
    head, h, labels = _problem()
    want = F.cross_entropy(head(h).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    want_grads = torch.autograd.grad(want, [h, head.weight])
    nll, n = token_nll(head, h, labels, vocab_size=50, chunk_logits=chunk_logits)
    assert n == int((labels != IGNORE_INDEX).sum())
    torch.testing.assert_close(nll, want, rtol=1e-6, atol=1e-5)
    for got, ref in zip(torch.autograd.grad(nll, [h, head.weight]), want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_the_head_sees_only_labelled_tokens_a_chunk_at_a_time():
    head, h, labels = _problem()
    seen = []
    token_nll(lambda x: seen.append(x.shape[0]) or head(x), h.detach(), labels, vocab_size=50, chunk_logits=50 * 4)
    assert sum(seen) == int((labels != IGNORE_INDEX).sum()) and max(seen) == 4


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_hidden_states_then_the_head_give_the_models_own_logits(family: str, tmp_path):
    from modlab.models.hf_causal_lm import load_hf_causal_lm

    lm, _ = load_hf_causal_lm(str(save_tiny_hf(tmp_path / family, family)))
    ids = torch.randint(0, 256, (2, 9))
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    with torch.no_grad():
        want = lm.hf(input_ids=ids, attention_mask=valid.long()).logits
        got = lm.logits_of(lm.hidden_states(ids, valid=valid))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gemma2_soft_capping_is_applied_by_the_head(tmp_path):
    from modlab.models.hf_causal_lm import load_hf_causal_lm

    lm, _ = load_hf_causal_lm(str(save_tiny_hf(tmp_path / "g2", "gemma2")))
    cap = lm.hf.config.final_logit_softcapping
    assert cap
    h = torch.randn(1, 3, lm.d_model) * 1e3  # raw logits far beyond the cap
    with torch.no_grad():
        assert float(lm.logits_of(h).abs().max()) <= cap + 1e-4


@pytest.mark.parametrize("chunk_logits", [1 << 26, 50 * 4, 50])
def test_a_frozen_head_gives_the_same_nll_and_hidden_gradient_in_one_pass(chunk_logits: int):
    """head_frozen=True takes d NLL / d h in the forward pass: same value and gradient as full
    cross-entropy, the head run once per chunk (no recompute in backward)."""
    head, h, labels = _problem()
    head.requires_grad_(False)
    want = F.cross_entropy(head(h).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    (want_grad,) = torch.autograd.grad(3.0 * want, [h])
    calls = []
    nll, _ = token_nll(
        lambda x: calls.append(1) or head(x), h, labels, vocab_size=50, chunk_logits=chunk_logits, head_frozen=True
    )
    torch.testing.assert_close(nll, want, rtol=1e-6, atol=1e-5)
    n_chunks = len(calls)
    (got,) = torch.autograd.grad(3.0 * nll, [h])  # the outer scale reaches the saved gradient
    torch.testing.assert_close(got, want_grad, rtol=1e-5, atol=1e-6)
    assert len(calls) == n_chunks  # backward ran no head


def test_head_is_frozen_reads_the_output_head_only(tmp_path):
    from modlab.models.hf_causal_lm import load_hf_causal_lm
    from modlab.models.token_nll import head_is_frozen

    lm, _ = load_hf_causal_lm(str(save_tiny_hf(tmp_path / "llama", "llama")))
    assert not head_is_frozen(lm)
    lm.requires_grad_(False)
    lm.hf.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)  # a trainable non-head part
    assert head_is_frozen(lm)
