"""The Emu3-like model: causal attention, next-token targets for image codes, AR sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modlab.data.rows import collate_rows, mmu_row, t2i_row
from modlab.data.tokens import IGNORE_INDEX, TokenSpace
from modlab.models.config import ModelConfig
from modlab.models.emu3 import Emu3
from modlab.routing.install import install_routing, threshold_routing

CFG = ModelConfig(arch="emu3", d_model=32, n_layer=2, n_head=2)
SP = TokenSpace(17)


def rows(n_img=6):
    g = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, 17, (n_img,), generator=g) for _ in range(2)]
    return collate_rows(
        [t2i_row(SP, "a 3", codes[0], n_img, 3), mmu_row(SP, codes[1], "what?", "a 3.", 3)], SP.pad
    ), codes


def test_t2i_rows_predict_each_image_code_and_eoi_from_the_previous_position():
    torch.manual_seed(0)
    batch, codes = rows()
    out = Emu3(CFG, SP, 6).training_batch(batch)
    ids, labels = batch["ids"][0], out["labels"][0]
    soi = int((ids == SP.soi).nonzero())
    expected = torch.full_like(labels, IGNORE_INDEX)
    expected[soi : soi + 7] = ids[soi + 1 : soi + 8]  # six codes, then [EOI]
    assert torch.equal(labels, expected)
    assert labels[soi + 6] == SP.eoi and torch.equal(labels[soi : soi + 6], codes[0] + SP.image_offset)
    assert torch.equal(out["labels"][1], batch["labels"][1])  # MMU rows keep their answer labels


def test_attention_is_causal_for_image_tokens_too():
    torch.manual_seed(0)
    model = Emu3(CFG, SP, 6).eval()
    batch, _ = rows()
    a = model(batch["ids"], batch["is_image"], batch["valid"], batch["task"])
    ids = batch["ids"].clone()
    soi = int((ids[0] == SP.soi).nonzero())
    ids[0, soi + 4] = SP.image_offset + (int(ids[0, soi + 4]) - SP.image_offset + 5) % 17  # change one image code
    b = model(ids, batch["is_image"], batch["valid"], batch["task"])
    torch.testing.assert_close(a[0, : soi + 4], b[0, : soi + 4])
    assert not torch.allclose(a[0, soi + 4 :], b[0, soi + 4 :])


def reference_sample(model: Emu3, prompts: dict, guidance: float, generator: torch.Generator) -> torch.Tensor:
    """Slow oracle: run the whole row at every step and read the logits before each image slot."""
    sp, ids = model.space, prompts["ids"].clone()
    img = [r.nonzero()[:, 0].tolist() for r in prompts["is_image"]]
    lo, hi = sp.image_offset, sp.image_offset + sp.n_image_codes
    for j in range(len(img[0])):
        full = model(ids, prompts["is_image"], prompts["valid"], prompts["task"])
        logits = torch.stack([full[b, img[b][j] - 1, lo:hi] for b in range(len(img))])
        if guidance:
            full = model(ids, prompts["is_image"], prompts["valid"] & ~prompts["cond"], prompts["task"])
            uncond = torch.stack([full[b, img[b][j] - 1, lo:hi] for b in range(len(img))])
            logits = (1 + guidance) * logits - guidance * uncond
        picked = torch.multinomial(F.softmax(logits.float(), -1), 1, generator=generator)[:, 0] + lo
        for b in range(len(img)):
            ids[b, img[b][j]] = picked[b]
    return torch.stack([ids[b, img[b]] for b in range(len(img))]) - lo


def test_autoregressive_sampling_equals_the_full_sequence_reference():
    torch.manual_seed(0)
    model = Emu3(CFG, SP, 6).eval()
    install_routing(model.transformer.blocks, CFG.d_model, {1: [0.5, 0.5, 1.0]}, "ste_sigmoid", "aux_bce")
    # captions of different lengths: the images start at different positions
    prompts = collate_rows([t2i_row(SP, c, None, 6, d) for c, d in (("a 1", 1), ("a seven", 7), ("four", 4))], SP.pad)
    for guidance in (0.0, 1.5):
        fast = model.sample_images(prompts, guidance=guidance, generator=torch.Generator().manual_seed(1))
        with threshold_routing(model):
            slow = reference_sample(model, prompts, guidance, torch.Generator().manual_seed(1))
        assert torch.equal(fast, slow)
        assert fast.shape == (3, 6) and fast.min() >= 0 and fast.max() < 17
