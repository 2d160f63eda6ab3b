"""Hugging Face unified models (Emu3, Chameleon, Janus) behind modlab's unified interface, on tiny
random models saved with save_pretrained (fp32): their rows are what the processor gives the model,
a routed model at capacity 1 is the model itself, capacity-0.5 routing of a padded batch is each
row's routing alone, and cached generation under threshold routing is a full recompute."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from helpers import save_tiny_hf_unified  # noqa: E402

from modlab.data import digits as D  # noqa: E402
from modlab.data.rows import (
    collate_rows,  # noqa: E402
    left_pad,  # noqa: E402
)
from modlab.data.tokens import TASK_ID  # noqa: E402
from modlab.data.vq_codec import digits_as_rgb  # noqa: E402
from modlab.errors import ConfigError  # noqa: E402
from modlab.models.hf_unified.base import KIND_ID  # noqa: E402
from modlab.models.hf_unified.loader import load_hf_unified  # noqa: E402
from modlab.routing.hf_routed_layer import install_hf_routing  # noqa: E402
from modlab.routing.install import threshold_routing  # noqa: E402
from modlab.routing.trace import record_routing  # noqa: E402

FAMILIES = ("emu3", "chameleon", "janus")
N_LAYER = 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> a tiny saved model directory, built on first use."""
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = save_tiny_hf_unified(tmp_path_factory.mktemp(family) / family, family, n_layer=N_LAYER)
        return made[family]

    return get


def load(saved, family: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torchvision is not installed: the PIL image processor"
        return load_hf_unified(str(saved(family)))


@pytest.fixture(scope="module")
def digits():
    """Three test digits: 8x8 images, labels."""
    test = D.load_digit_splits(0)["test"]
    return test.images[:3], test.labels[:3]


def image_inputs(model, digits):
    rgb = digits_as_rgb(digits[0], model.codec.resolution)
    return rgb, model.codec.encode(rgb)


def mixed_rows(model, digits) -> list[dict]:
    """T2I, MMU and LM rows of different lengths (a padded batch)."""
    rgb, codes = image_inputs(model, digits)
    labels = digits[1]
    return [
        model.t2i_row("a handwritten 3", codes[0], int(labels[0])),
        model.mmu_row(codes[1], "what digit is this?", "it is a 4", int(labels[1]), image=rgb[1]),
        model.lm_row("some text to model"),
        model.mmu_row(codes[2], "which?", "a 9", int(labels[2]), image=rgb[2]),
        model.t2i_row("a 7 that is handwritten, thin", codes[2], int(labels[2])),
    ]


def randomise_routers(model, seed: int = 0) -> None:
    """Router scores of a few units: no ties, and threshold decisions both ways."""
    g = torch.Generator().manual_seed(seed)
    for layer in model.routing.layers.values():
        w = layer.router.proj.weight
        w.data = torch.randn(w.shape, generator=g) * 3 * w.shape[1] ** -0.5


def forward(model, batch):
    return model(batch["ids"], batch["is_image"], batch["valid"], batch["task"], batch["kind"], batch.get("pixels"))


# ---- rows in the family's own format ----------------------------------------------------------------


def processor_mmu_inputs(model, rgb, question: str):
    """What the family's processor gives its model for one image and a question (with <bos>)."""
    family = model.family.model_type
    placeholder = {"chameleon": "<image>", "janus": "<image_placeholder>"}[family]
    out = model.processor(text=placeholder + question, images=[rgb], return_tensors="pt")
    ids = torch.cat([torch.tensor([[model.bos]]), out["input_ids"]], 1)
    return ids, out["pixel_values"]


@pytest.mark.parametrize("family", ["chameleon", "janus"])
def test_an_mmu_prompt_is_what_the_processor_gives_the_model(saved, digits, family):
    model = load(saved, family)
    rgb, codes = image_inputs(model, digits)
    question = "what digit is this?"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, pixels = processor_mmu_inputs(model, rgb[0], question if family == "chameleon" else question + " ")
    row = left_pad([model.mmu_row(codes[0], question, None, image=rgb[0])], model.pad)
    with torch.no_grad():
        ours = forward(model, row)
        theirs = model.hf(input_ids=ids, pixel_values=pixels).logits
    if family == "chameleon":
        # the model embeds a processed image as its VQ codes' tokens (get_image_tokens) at the placeholders
        image_tokens = model.hf.model.get_image_tokens(pixels)[0].long()
        expected = ids.clone()
        expected[ids == model.processor.image_token_id] = image_tokens
        assert row["ids"].tolist() == expected.tolist()
        torch.testing.assert_close(ours, theirs)
    else:
        # the placeholders stay; the vision encoder reads the row's pixels, which are the processor's
        assert row["ids"].tolist() == ids.tolist()
        torch.testing.assert_close(row["pixels"], pixels)
        torch.testing.assert_close(ours[..., : model.text_vocab], theirs)
        assert bool((ours[..., model.text_vocab :] == torch.finfo(ours.dtype).min).all())  # no code predicted


def test_chameleon_t2i_rows_predict_image_tokens_that_text_rows_may_not(saved, digits):
    model = load(saved, "chameleon")
    batch = collate_rows(mixed_rows(model, digits), model.pad)
    with torch.no_grad():
        logits = forward(model, batch)
    low = torch.finfo(logits.dtype).min
    image_logits = logits[..., model.code_to_id]
    t2i = batch["task"] == TASK_ID["t2i"]
    assert bool((image_logits[~t2i] == low).all())  # as ChameleonForConditionalGeneration.forward masks them
    assert bool((image_logits[t2i] > low).all())


def test_janus_image_sampling_is_janus_generate(saved):
    """Janus's own generate() in image mode (StaticCache, generation embeddings and head), greedy:
    with no caption its unconditional rows are the conditional ones, so guidance changes nothing
    in either loop, and the codes are the same."""
    from transformers import GenerationConfig

    model = load(saved, "janus")
    prompt = model.t2i_prompt("")
    assert prompt["ids"].tolist() == [model.bos, model.boi]
    ids = prompt["ids"][None]
    cfg = GenerationConfig(
        do_sample=False,
        guidance_scale=2.0,
        bos_token_id=model.bos,
        pad_token_id=model.pad,
        generation_kwargs={"boi_token_id": model.boi},
    )
    theirs = model.hf.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image", generation_config=cfg)
    g = torch.Generator().manual_seed(0)
    ours = model.sample_images(left_pad([prompt], model.pad), guidance=1.0, temperature=1e-6, generator=g)
    assert torch.equal(ours, theirs)


def test_janus_needs_the_mmu_image_and_its_vision_resolution(saved, digits):
    model = load(saved, "janus")
    _, codes = image_inputs(model, digits)
    with pytest.raises(ConfigError, match="vision encoder"):
        model.mmu_row(codes[0], "what digit?", None)
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="model.resolution=64"):
        warnings.simplefilter("ignore")
        load_hf_unified(str(saved("janus")), resolution=64)


# ---- (a) capacity 1 is the model itself ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_routed_at_capacity_one_is_the_unmodified_model(saved, digits, family):
    model = load(saved, family)
    reference = copy.deepcopy(model)
    model.routing = install_hf_routing(model.hf, {i: [1.0, 1.0, 1.0] for i in range(N_LAYER)}, causal="aux_bce")
    batch = collate_rows(mixed_rows(model, digits), model.pad)
    # some captions made invisible, as caption dropout does
    batch = model.training_batch(batch, cond_dropout=0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), record_routing(model) as trace:
        routed_logits, routed_losses = forward(model, batch), model.task_losses(batch)
        ref_logits, ref_losses = forward(reference, batch), reference.task_losses(batch)
    assert {r.layer for r in trace.records} == set(range(N_LAYER))
    assert set(ref_losses) == {"t2i", "mmu", "lm"}
    valid = batch["valid"]
    torch.testing.assert_close(routed_logits[valid], ref_logits[valid])
    torch.testing.assert_close(routed_losses, ref_losses)


# ---- (b) capacity 0.5: the batch routes each row as it would alone -------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_half_capacity_routes_each_padded_row_as_alone(saved, digits, family):
    model = load(saved, family)
    capacity = [0.5, 0.5, 1.0]  # t2i, mmu, lm (modlab.data.tokens.TASKS)
    # every layer, layer 0 too: it reads token embeddings, where repeated codes tie; the stable
    # selection keeps the earlier copy, so a row keeps the same tokens alone or in a batch
    model.routing = install_hf_routing(model.hf, {i: capacity for i in range(N_LAYER)})
    randomise_routers(model)
    rows = mixed_rows(model, digits)
    batch = collate_rows(rows, model.pad)
    with torch.no_grad(), record_routing(model) as trace:
        logits = forward(model, batch)
    routable = batch["valid"] & ~model.not_routed(batch["kind"])  # the image tokens
    expected = torch.tensor(
        [math.ceil(capacity[int(t)] * int(n)) for t, n in zip(batch["task"], routable.sum(1))], dtype=torch.long
    )
    assert bool((routable.sum(1)[batch["task"] != TASK_ID["lm"]] > 0).all())
    assert len(trace.records) == N_LAYER
    for record in trace.records:
        assert record.kept.tolist() == expected.tolist(), record.layer
    for b, row in enumerate(rows):
        alone = collate_rows([row], model.pad)
        with torch.no_grad():
            own = forward(model, alone)[0]
        n = len(row["ids"])
        torch.testing.assert_close(logits[b, :n], own, atol=1e-5, rtol=1e-4)


# ---- (c) cached generation under threshold routing -----------------------------------------------------


def routed_for_decoding(saved, family: str):
    """Layers 1.. routed with a causal decision (layer 0 sizes transformers' decode masks)."""
    model = load(saved, family)
    model.routing = install_hf_routing(model.hf, {i: [0.5, 0.5, 1.0] for i in range(1, N_LAYER)}, causal="aux_bce")
    randomise_routers(model, seed=2)
    return model


def recomputed_answer(model, prompts: dict, max_new_tokens: int) -> list[list[int]]:
    """Greedy answers by a full forward of the whole sequence at every step (no cache)."""
    ids, valid, task, kind = prompts["ids"], prompts["valid"], prompts["task"], prompts["kind"]
    out = []
    with torch.no_grad(), threshold_routing(model):
        for _ in range(max_new_tokens):
            positions = (valid.long().cumsum(1) - 1).clamp(min=0)
            nxt = model.logits(ids, valid, task, kind, positions=positions, pixels=prompts.get("pixels"))[:, -1]
            nxt = nxt.float().argmax(-1)
            out.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
            kind = torch.cat([kind, torch.full_like(kind[:, :1], KIND_ID["answer"])], 1)
    answers = []
    for row in torch.stack(out, 1).tolist():
        answers.append(row[: row.index(model.eos)] if model.eos in row else row)
    return answers


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_answers_are_the_recomputed_ones(saved, digits, family, monkeypatch):
    model = routed_for_decoding(saved, family)
    rgb, codes = image_inputs(model, digits)
    questions = ("what digit is this?", "which?", "tell me the digit")  # left padding
    prompts = left_pad([model.mmu_row(codes[i], q, None, image=rgb[i]) for i, q in enumerate(questions)], model.pad)
    monkeypatch.setattr(model, "decode_text", lambda ids: ids)  # answers as token ids
    cached = model.answer(prompts, max_new_tokens=6)
    assert len(cached) == 3
    assert cached == recomputed_answer(model, prompts, 6)


@pytest.mark.parametrize("family", FAMILIES)
def test_guided_sampling_runs_with_the_compact_cache(saved, family):
    model = routed_for_decoding(saved, family)
    prompts = left_pad([model.t2i_prompt("a handwritten 1"), model.t2i_prompt("a 2")], model.pad)
    codes = model.sample_images(prompts, guidance=2.0, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, model.codec.n_tokens)
    assert codes.dtype == torch.long and 0 <= int(codes.min()) and int(codes.max()) < model.codec.n_codes
    codes, cache = model.draw_images(prompts, lambda scores: scores.argmax(-1), guidance=2.0)
    entries = model.routing.cache_entries(cache)  # (2B,) entries that hold a token, per routed layer
    written = prompts["ids"].shape[1] + model.codec.n_tokens - 1 + len(model.row_end) * (model.codec.grid[0] - 1)
    assert all(e.shape == (4,) for e in entries.values())  # cond + uncond: one batch of 2B rows
    assert all(int(e.max()) <= written for e in entries.values())
    # the first prompt is the longest (no padding): where its tokens skipped a layer, that layer cached fewer
    assert any(int(e[0]) < written for e in entries.values())


def test_every_family_loads_through_its_own_class(saved):
    from modlab.models.hf_unified.hf_chameleon import HFChameleon
    from modlab.models.hf_unified.hf_emu3 import HFEmu3
    from modlab.models.hf_unified.hf_janus import HFJanus
    from modlab.registry import unified_model_types

    assert set(unified_model_types()) == {*FAMILIES, "phi"}  # phi: Show-o, tests/unit/models/test_hf_showo_unified.py
    for family, cls in zip(FAMILIES, (HFEmu3, HFChameleon, HFJanus)):
        model = load(saved, family)
        assert type(model) is cls and model.codec.grid == (8, 8)
        assert model.codec.has_decoder == (family != "chameleon")
        assert len(model.decoder_layers()) == N_LAYER


def test_chameleon_codes_cannot_be_decoded_in_one_line(saved):
    model = load(saved, "chameleon")
    with pytest.raises(ConfigError, match="no decoder"):
        model.codec.decode(torch.zeros(1, model.codec.n_tokens, dtype=torch.long))


def test_janus_mmu_rows_get_pixels_in_the_data_module(saved, tmp_path):
    """Digits rendered as RGB, and a user's image folder read again, for the vision encoder."""
    from PIL import Image

    from modlab.data.config import DataConfig
    from modlab.training.config import EvalConfig
    from modlab.training.hf_unified_datamodule import HFUnifiedDataModule

    model = load(saved, "janus")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(folder / "grey.png")
    (folder / "captions.jsonl").write_text('{"file": "grey.png", "caption": "grey", "question": "q?", "answer": "a"}\n')
    cfg = DataConfig(batch_size={"t2i": 1, "mmu": 1, "lm": 1}, image_folder=str(folder))
    dm = HFUnifiedDataModule(cfg, EvalConfig(), model, str(tmp_path / "cache"))
    mmu = next(iter(dm.train_dataloader().iterables["mmu"]))
    assert mmu["pixels"].shape == (1, 3, 32, 32)
    expected = model.codec.preprocess(np.full((1, 32, 32, 3), 200, dtype=np.uint8))
    torch.testing.assert_close(mmu["pixels"], expected)
    prompts = next(iter(dm.test_dataloader()[0]))
    assert prompts["pixels"].shape[0] == prompts["ids"].shape[0]
    assert "pixels" not in next(iter(dm.test_dataloader()[1]))  # T2I prompts see no image
