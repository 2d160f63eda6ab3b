"""The Show-o-like model: omni-attention semantics, causality, padding, objectives, sampling."""

from __future__ import annotations

import math

import torch

from modlab.data.rows import collate_rows, concat_batches, lm_row, mmu_row, t2i_row
from modlab.data.tokens import IGNORE_INDEX, TokenSpace
from modlab.models.config import ModelConfig
from modlab.models.omni_attention import omni_attention_mask
from modlab.models.showo import ShowO
from modlab.models.transformer import apply_rope, attend, rope_cos_sin

SP = TokenSpace(17)
CFG = ModelConfig(d_model=32, n_layer=2, n_head=2)


def tiny_model() -> ShowO:
    torch.manual_seed(0)
    return ShowO(CFG, SP, 64).eval()


def t2i_batch(n=2, caption="a 3"):
    return collate_rows([t2i_row(SP, caption, torch.randint(0, 17, (64,)), 64, 3) for _ in range(n)], SP.pad)


def test_omni_mask_on_a_hand_built_row():
    # positions: 0 text, 1 text, 2-4 image, 5 text, 6 pad
    is_image = torch.tensor([[0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    m = omni_attention_mask(is_image, valid)[0, 0]
    assert m[0].tolist() == [1, 0, 0, 0, 0, 0, 0]  # text: causal
    assert m[2].tolist() == [1, 1, 1, 1, 1, 0, 0]  # first image token sees all image tokens
    assert m[5].tolist() == [1, 1, 1, 1, 1, 1, 0]  # text after the image sees it all
    assert not m[:6, 6].any()  # nobody attends to padding
    assert m[6, 6]  # but padding sees itself (no empty softmax row)


def test_attention_matches_sdpa():
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask |= torch.eye(5, dtype=torch.bool)
    torch.testing.assert_close(
        attend(q, k, v, mask), torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    )


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 16, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 16, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))


def test_text_is_causal_and_image_tokens_see_each_other():
    model = tiny_model()
    b = collate_rows([mmu_row(SP, torch.randint(0, 17, (64,)), "what?", "a 3.", 3)], SP.pad)
    base = model(b["ids"], b["is_image"], b["valid"])
    ids = b["ids"].clone()
    ids[0, -2] = ord("x")  # change a late text token
    out = model(ids, b["is_image"], b["valid"])
    torch.testing.assert_close(out[0, :-2], base[0, :-2])  # nothing before it moves
    ids = b["ids"].clone()
    ids[0, 60] = SP.image_offset + (int(ids[0, 60]) - SP.image_offset + 1) % 17  # change a late image token
    out = model(ids, b["is_image"], b["valid"])
    assert not torch.allclose(out[0, 3], base[0, 3])  # an earlier image token sees it
    torch.testing.assert_close(out[0, :2], base[0, :2])  # the [MMU] [SOI] prefix does not


def test_padding_does_not_change_valid_logits():
    model = tiny_model()
    short = collate_rows([lm_row(b"hello world")], SP.pad)
    padded = concat_batches([short, collate_rows([lm_row(b"a much longer row of text")], SP.pad)], SP.pad)
    a = model(short["ids"], short["is_image"], short["valid"])
    b = model(padded["ids"], padded["is_image"], padded["valid"])[:1, : short["ids"].shape[1]]
    torch.testing.assert_close(a, b)


def test_t2i_masking_hits_only_t2i_image_tokens_with_the_cosine_ratio():
    model = tiny_model()
    batch = concat_batches([t2i_batch(400), collate_rows([lm_row(b"text row")], SP.pad)], SP.pad)
    out = model.mask_images(batch, cond_dropout=0.0, generator=torch.Generator().manual_seed(0))
    masked = out["ids"] == SP.mask
    assert (masked <= batch["is_image"]).all() and not masked[-1].any()
    assert (out["labels"][masked] == batch["ids"][masked]).all()
    assert (out["labels"][~masked & batch["is_image"]] == IGNORE_INDEX).all()
    # E[cos(pi t / 2)] for t ~ U(0, 1) is 2 / pi
    frac = masked[:-1].float().sum(1) / 64
    assert abs(frac.mean().item() - 2 / math.pi) < 0.05 and frac.min() >= 1 / 64


def test_caption_dropout_hides_captions_only():
    model = tiny_model()
    batch = t2i_batch(200)
    out = model.mask_images(batch, cond_dropout=0.5, generator=torch.Generator().manual_seed(0))
    dropped = (~out["valid"] & batch["valid"]).any(1)
    assert 0.35 < dropped.float().mean() < 0.65
    assert ((~out["valid"] & batch["valid"]) <= batch["cond"]).all()


def test_losses_per_task_and_gradients_flow():
    model = tiny_model().train()
    batch = concat_batches(
        [
            t2i_batch(2),
            collate_rows([mmu_row(SP, torch.randint(0, 17, (64,)), "what?", "a 3.", 3)], SP.pad),
            collate_rows([lm_row(b"some text here")], SP.pad),
        ],
        SP.pad,
    )
    losses = model.task_losses(model.mask_images(batch))
    assert set(losses) == {"t2i", "mmu", "lm"}
    # an untrained model is close to uniform over the vocabulary
    for v in losses.values():
        assert abs(v.item() - math.log(SP.vocab_size)) < 1.0
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_maskgit_fills_every_image_token_with_a_code():
    model = tiny_model()
    prompts = collate_rows([t2i_row(SP, "a 3", None, 64, 3), t2i_row(SP, "a longer caption", None, 64, 5)], SP.pad)
    for guidance in (0.0, 2.0):
        codes = model.sample_images(prompts, steps=4, guidance=guidance, generator=torch.Generator().manual_seed(0))
        assert codes.shape == (2, 64) and codes.min() >= 0 and codes.max() < 17


def test_greedy_answer_is_text():
    model = tiny_model()
    rows = [mmu_row(SP, torch.randint(0, 17, (64,)), "what?", None, 3) for _ in range(3)]
    answers = model.answer(collate_rows(rows, SP.pad), max_new_tokens=5)
    assert len(answers) == 3 and all(isinstance(a, str) and len(a) <= 5 for a in answers)
