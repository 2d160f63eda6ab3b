"""The hf_showo family's model (modlab.models.hf_unified.hf_showo) on a tiny random Show-o directory
(tests/helpers.save_tiny_hf_showo: Phi from a PhiConfig, a byte-level tokenizer, the stand-in
image codebook fitted on the digits; nothing is downloaded): the directory and its one-line
errors, rows with token kinds, the forward against hf_showo's, UniMoD routing through
HFShowo.task_losses (capacity 1 = unrouted; ceil(C * routable) kept per task), MaskGIT sampling
and greedy answers."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil

import pytest
import torch
from helpers import save_tiny_hf, save_tiny_hf_showo

from modlab.data import digits as D
from modlab.data.rows import collate_rows, left_pad
from modlab.data.showo_codec import SHOWO_CODEBOOK_FILE, PatchCodebookCodec
from modlab.data.tokens import TASK_ID
from modlab.errors import CheckpointError, ConfigError
from modlab.models.hf_unified import showo_phi as S
from modlab.models.hf_unified.base import KIND_ID
from modlab.models.hf_unified.loader import load_hf_unified
from modlab.routing.hf_routed_layer import install_hf_routing
from modlab.routing.trace import record_routing

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def showo_dir(tmp_path_factory):
    return save_tiny_hf_showo(tmp_path_factory.mktemp("showo") / "showo")


@pytest.fixture
def model(showo_dir):
    return load_hf_unified(str(showo_dir))


def digit_codes(model, n: int) -> tuple[torch.Tensor, list[int]]:
    split = D.load_digit_splits(0)["test"]
    from modlab.data.hf_unified_rows import DigitCodec

    return DigitCodec(model.codec).encode(split.images[:n]), [int(d) for d in split.labels[:n]]


def mixed_rows(model) -> list[dict]:
    codes, digits = digit_codes(model, 4)
    return [
        model.t2i_row(D.caption(digits[0], 0), codes[0], digits[0]),
        model.t2i_row(D.caption(digits[1], 3), codes[1], digits[1]),
        model.mmu_row(codes[2], D.question(0), D.answer(digits[2], 0), digits[2]),
        model.mmu_row(codes[3], D.question(1), D.answer(digits[3], 2), digits[3]),
        model.lm_row("a line of text to model"),
        model.lm_row("short"),
    ]


# ---- the directory --------------------------------------------------------------------------------


def test_the_directory_loads_as_show_o_with_its_stand_in_codebook(showo_dir, model):
    assert type(model).__name__ == "HFShowo" and model.model_type == "showo" and model.family.model_type == "phi"
    v = model.vocab
    assert (v.n_text, v.n_codes, v.size) == (len(model.tokenizer), 32, model.config.vocab_size)
    assert model.codec.n_codes == v.n_codes and model.codec.grid == (8, 8) and model.codec.resolution == 32
    # the codec's identity is the codebook file's hash
    digest = hashlib.sha256((showo_dir / SHOWO_CODEBOOK_FILE).read_bytes()).hexdigest()[:16]
    assert model.codec.identity == digest
    assert model.config.qk_layernorm and model.hf.training is False


def test_shows_released_checkpoint_layout_loads_the_same_weights(showo_dir, tmp_path, model):
    released = load_hf_unified(str(save_tiny_hf_showo(tmp_path / "released", released=True)))
    mine, theirs = model.hf.state_dict(), released.hf.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # a released checkpoint that does not fit is one CheckpointError line
    state = torch.load(tmp_path / "released" / "pytorch_model.bin", weights_only=True)
    state.pop("showo.lm_head.bias")
    torch.save(state, tmp_path / "released" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="1 missing"):
        load_hf_unified(str(tmp_path / "released"))


def copy_of(showo_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(showo_dir, out)
    return out


def edit_vocab(path, **changes):
    spec = json.loads((path / "showo_vocab.json").read_text())
    (path / "showo_vocab.json").write_text(json.dumps({**spec, **changes}))


def one_line(error, fn, *needles):
    with pytest.raises(error) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_every_way_the_directory_is_wrong_is_one_line(showo_dir, tmp_path):
    phi = save_tiny_hf(tmp_path / "phi", "phi")
    one_line(ConfigError, lambda: load_hf_unified(str(phi)), "without Show-o's vocabulary", "showo_vocab.json")
    d = copy_of(showo_dir, tmp_path)
    edit_vocab(d, n_codes=16)
    one_line(ConfigError, lambda: load_hf_unified(str(d)), "32 codes", "n_codes 16")
    edit_vocab(d, n_codes=32, n_text=258)
    one_line(ConfigError, lambda: load_hf_unified(str(d)), "257 tokens", "n_text 258")
    edit_vocab(d, n_text=257)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "vocab_size": 320}))
    one_line(ConfigError, lambda: load_hf_unified(str(d)), "320 token embeddings")
    shutil.copy(showo_dir / "config.json", d / "config.json")
    edit_vocab(d, sot=9999)
    one_line(ConfigError, lambda: load_hf_unified(str(d)), "showo_vocab.json", "<|sot|>")
    (d / "showo_vocab.json").write_text("{not json")
    one_line(ConfigError, lambda: load_hf_unified(str(d)), "not Show-o's vocabulary layout")
    shutil.copy(showo_dir / "showo_vocab.json", d / "showo_vocab.json")
    one_line(ConfigError, lambda: load_hf_unified(str(d), resolution=64), "fitted at 32")
    (d / SHOWO_CODEBOOK_FILE).write_bytes(b"garbage")
    one_line(CheckpointError, lambda: load_hf_unified(str(d)), "could not be read")
    (d / SHOWO_CODEBOOK_FILE).unlink()
    one_line(CheckpointError, lambda: load_hf_unified(str(d)), "does not exist")


def test_the_stand_in_codec_round_trips_its_own_patches():
    g = torch.Generator().manual_seed(0)
    centroids = torch.randint(0, 256, (8, 4 * 4 * 3), generator=g).float()
    codec = PatchCodebookCodec(centroids, 16, 4)
    codes = torch.randint(0, 8, (3, 16), generator=g)
    images = codec.decode(codes)  # each patch is its code's centroid: encoding finds it again
    assert images.shape == (3, 16, 16, 3) and 0 <= float(images.min()) and float(images.max()) <= 1
    again = codec.encode((images * 255).round().to(torch.uint8).numpy())
    assert torch.equal(again, codes)
    with pytest.raises(ConfigError):
        codec.encode(torch.zeros(1, 8, 8, 3, dtype=torch.uint8).numpy())


# ---- rows and the forward ---------------------------------------------------------------------------


def test_rows_are_show_os_with_token_kinds(model):
    v = model.vocab
    t2i, _, mmu, _, lm, _ = mixed_rows(model)
    kind = {name: KIND_ID[name] for name in ("caption", "image", "special", "question", "answer", "text")}
    # T2I: [PAD]... [t2i] [sot] caption [eot] [soi] image [eoi], the text field max_text_len + 1 wide
    assert int((t2i["ids"] == v.soi).nonzero()) == model.max_text_len + 1
    assert torch.equal(t2i["kind"] == kind["caption"], t2i["cond"])
    assert torch.equal(t2i["kind"] == kind["image"], t2i["is_image"]) and int(t2i["is_image"].sum()) == 64
    assert bool((t2i["kind"][~(t2i["cond"] | t2i["is_image"])] == kind["special"]).all())
    # MMU: [mmu] [soi] image [eoi] [sot] "USER: \n" question " ASSISTANT:" answer [eot]
    q = model.text_ids("USER: \nwhat digit is this? ASSISTANT:")
    assert mmu["ids"][:2].tolist() == [v.mmu, v.soi] and mmu["ids"][66:68].tolist() == [v.eoi, v.sot]
    assert mmu["ids"][68 : 68 + len(q)].tolist() == q and mmu["ids"][-1] == v.eot
    assert (mmu["kind"] == kind["question"]).sum() == len(q)
    answer = mmu["kind"] == kind["answer"]
    assert model.decode_text(mmu["ids"][answer].tolist()).strip() == D.answer(int(mmu["digit"]), 0)
    assert bool((mmu["labels"][answer.roll(-1)] != -100).all())  # the loss is on the answer and [eot]
    assert lm["kind"].tolist() == [kind["special"]] + [kind["text"]] * 23 + [kind["special"]]
    # what the forward reads off the ids when given no kinds: the same for the LM row and T2I's image
    assert torch.equal(model.kinds_of(lm["ids"], lm["is_image"]), lm["kind"])
    assert torch.equal(model.kinds_of(t2i["ids"], t2i["is_image"]) == kind["image"], t2i["is_image"])


def test_the_forward_is_show_os_with_its_pad_never_valid(model):
    rows = mixed_rows(model)
    batch = collate_rows(rows, model.pad)  # the generic collation: Show-o's [PAD] marked valid
    showo = S.collate([{k: v for k, v in r.items() if k != "kind"} for r in rows], model.vocab)
    assert not torch.equal(batch["valid"], showo["valid"])
    with torch.no_grad():
        ours = model(batch["ids"], batch["is_image"], batch["valid"], batch["task"], batch["kind"])
        theirs = S.showo_logits(model.hf, showo["ids"], showo["is_image"], showo["valid"])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_training_batch_masks_t2i_codes_and_drops_captions_as_show_o(model):
    batch = collate_rows(mixed_rows(model), model.pad)
    g = torch.Generator().manual_seed(0)
    out = model.training_batch(batch, 1.0, g)  # every T2I caption dropped
    t2i = batch["task"] == TASK_ID["t2i"]
    masked = out["ids"] == model.vocab.mask
    assert bool(masked[t2i].any()) and not bool(masked[~t2i].any()) and bool((batch["is_image"] | ~masked).all())
    assert torch.equal(out["labels"][masked], batch["ids"][masked])
    assert not bool(out["cond"][t2i].any())  # the captions are gone: [PAD]... [t2i] [sot] [eot] [soi]
    soi = int((batch["ids"][0] == model.vocab.soi).nonzero())
    assert out["ids"][0, soi - 3 : soi].tolist() == [model.vocab.t2i, model.vocab.sot, model.vocab.eot]
    assert not bool((out["kind"][t2i] == KIND_ID["caption"]).any())  # rewritten tokens are specials
    assert torch.equal(out["ids"][~t2i], batch["ids"][~t2i]) and torch.equal(out["kind"][~t2i], batch["kind"][~t2i])


# ---- routing through HFShowo.task_losses ----------------------------------------------------------


def routed(model, caps: dict[int, list[float]], causal: str = "none"):
    model.routing = install_hf_routing(model.hf, caps, causal=causal)
    return model


def test_capacity_one_is_the_unrouted_model_through_task_losses(model):
    base = copy.deepcopy(model)
    routed(model, {i: [1.0, 1.0, 1.0] for i in (1, 2, 3)})
    batch = model.training_batch(collate_rows(mixed_rows(model), model.pad), 0.0, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.task_losses(batch)
        # hf_showo's batch: its collate marks Show-o's [PAD] invalid
        showo = {**batch, "valid": batch["valid"] & (batch["ids"] != model.pad)}
        theirs = S.showo_task_losses(base.hf, showo, model.vocab)
    assert set(ours) == {"t2i", "mmu", "lm"}
    for task, loss in ours.items():
        torch.testing.assert_close(loss, theirs[task], rtol=0, atol=0)


@pytest.mark.parametrize("route_tokens", [("image",), ("image", "caption", "question", "text")])
def test_each_task_keeps_ceil_c_of_its_routable_tokens(showo_dir, route_tokens):
    model = load_hf_unified(str(showo_dir), route_tokens=route_tokens)
    caps = [0.5, 0.25, 0.75]
    routed(model, {2: caps, 3: caps})
    batch = model.training_batch(collate_rows(mixed_rows(model), model.pad), 0.0, torch.Generator().manual_seed(2))
    with record_routing(model) as trace, torch.no_grad():
        model.task_losses(batch)
    real = batch["valid"] & (batch["ids"] != model.pad)
    routable = real & ~model.not_routed(batch["kind"])
    expected = [math.ceil(caps[int(t)] * int(n) - 1e-6) for t, n in zip(batch["task"], routable.sum(1))]
    for layer in (2, 3):
        (record,) = trace.layer(layer)
        assert torch.equal(record.valid, routable)  # [PAD] and the kinds not routed are never decided for
        assert record.kept.tolist() == expected
        assert not bool((record.selected & ~real).any())


# ---- inference --------------------------------------------------------------------------------------


def test_maskgit_routes_by_top_k_in_one_guided_batch(model):
    routed(model, {2: [0.5, 0.5, 1.0]}, causal="aux_bce")
    prompts = left_pad(
        [model.t2i_prompt(D.EVAL_CAPTION.format(d=d, name=D.DIGIT_NAMES[d]), d) for d in (3, 7)], model.pad
    )
    with record_routing(model) as trace:
        codes = model.sample_images(prompts, 3, 1.5, 1.0, torch.Generator().manual_seed(0))
    assert codes.shape == (2, 64) and 0 <= int(codes.min()) and int(codes.max()) < 32
    records = trace.layer(2)
    assert len(records) == 3  # one forward per step, guidance included (4 rows)
    for r in records:
        assert r.mode == "topk" and len(r.task) == 4  # MaskGIT is not autoregressive: top-k as in training
        assert r.kept.tolist() == [32] * 4 and torch.equal(r.valid, prompts["is_image"].repeat(2, 1))


def test_greedy_answers_decode_prompts_of_different_lengths_in_groups(model):
    routed(model, {2: [0.5, 0.5, 1.0]}, causal="aux_bce")
    codes, digits = digit_codes(model, 3)
    rows = [model.mmu_row(codes[i], D.question(i), None, digits[i]) for i in range(3)]
    rows.append(model.mmu_row(codes[1], D.question(0), None, digits[1]))  # a group of two
    assert len({len(r["ids"]) for r in rows}) > 1
    with record_routing(model) as trace:
        together = model.answer(left_pad(rows, model.pad), 4)
    assert all(r.mode == "threshold" for r in trace.layer(2))  # token by token: the causal decision
    alone = [model.answer(left_pad([r], model.pad), 4)[0] for r in rows]
    assert together == alone and all(isinstance(a, str) for a in together)
