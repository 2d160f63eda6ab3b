"""Show-o on transformers' PhiForCausalLM (modlab.models.hf_unified.showo_phi), on tiny random Phi models built
from PhiConfig (nothing is downloaded): the released vocabulary layout, strict checkpoint loading,
the omni-attention mask as Phi's layers take it, MaskGIT masking and sampling, the task losses, and
UniMoD token routing inside the Phi layers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from modlab.data.tokens import IGNORE_INDEX, TASK_ID
from modlab.errors import CheckpointError, ConfigError
from modlab.models.hf_unified import showo_phi as S
from modlab.routing.hf_routed_layer import install_hf_routing
from modlab.routing.trace import record_routing

transformers = pytest.importorskip("transformers")

N_TEXT, N_CODES, N_IMG, MAX_TEXT = 100, 16, 9, 6
TASKS = ("t2i", "mmu", "lm")


def tiny_config(**extra):
    return transformers.PhiConfig(
        vocab_size=120,  # Phi pads its embedding beyond the tokenizer (51200 > 50295)
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
        **extra,
    )


def tiny_showo(attn: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    model, vocab = S.build_showo_phi(tiny_config(), N_CODES, N_TEXT, attn_implementation=attn)
    return model.eval(), vocab


def codes(seed: int) -> torch.Tensor:
    return torch.randint(0, N_CODES, (N_IMG,), generator=torch.Generator().manual_seed(seed))


def text(seed: int, n: int) -> list[int]:
    return torch.randint(3, N_TEXT, (n,), generator=torch.Generator().manual_seed(100 + seed)).tolist()


def mixed_batch(vocab, image=True):
    """T2I (left-padded text field), MMU (right-padded by collation) and LM rows of different lengths."""
    rows = [
        S.t2i_row(vocab, text(0, 2), codes(0) if image else None, N_IMG, MAX_TEXT),
        S.t2i_row(vocab, text(1, 4), codes(1) if image else None, N_IMG, MAX_TEXT),
        S.mmu_row(vocab, codes(2), text(2, 3), text(3, 3)),
        S.mmu_row(vocab, codes(3), text(4, 2), text(5, 1)),
        S.lm_row(vocab, text(6, 9)),
        S.lm_row(vocab, text(7, 4)),
    ]
    return S.collate(rows, vocab)


def logits_of(model, batch, routing=None, task=None):
    with torch.no_grad():
        return S.showo_logits(model, batch["ids"], batch["is_image"], batch["valid"], routing, task)


# ---- vocabulary and model ----------------------------------------------------------------------


def test_vocabulary_is_the_released_layout():
    v = S.ShowoVocab()  # Phi-1.5's tokenizer and the 8192 MAGVIT-v2 codes
    # the ids Show-o prints (github.com/showlab/Show-o/issues/94) and configs/showo_demo.yaml's sizes
    assert (v.pad, v.soi, v.eoi, v.t2i, v.mmu, v.special("lvg")) == (50295, 50296, 50297, 50300, 50301, 50304)
    assert v.sot == v.eot == 50256
    assert (v.image_offset, v.mask, v.size) == (50305, 58497, 58498)  # llm_vocab + 10 specials; mask = vocab - 1
    with pytest.raises(ConfigError):
        v.special("eos")


def test_build_resizes_phi_and_turns_on_qk_layernorm(tmp_path):
    torch.manual_seed(0)
    phi = transformers.PhiForCausalLM(tiny_config())
    phi.save_pretrained(tmp_path)
    model, vocab = S.build_showo_phi(tmp_path, N_CODES, N_TEXT)
    assert vocab.size == N_TEXT + 10 + N_CODES + 1
    assert model.get_input_embeddings().weight.shape == (vocab.size, 64)
    assert model.lm_head.weight.shape == (vocab.size, 64) and model.lm_head.bias.shape == (vocab.size,)
    assert model.config.qk_layernorm and hasattr(model.model.layers[0].self_attn, "q_layernorm")
    # Phi's own rows are kept (the text ids and, beyond the tokenizer, its padding rows)
    torch.testing.assert_close(model.get_input_embeddings().weight[:120], phi.get_input_embeddings().weight)
    torch.testing.assert_close(model.model.layers[1].mlp.fc1.weight, phi.model.layers[1].mlp.fc1.weight)
    assert (vocab.sot, vocab.eot) == (phi.config.bos_token_id, phi.config.eos_token_id)
    with pytest.raises(ConfigError, match="no config.json"):
        S.build_showo_phi(tmp_path / "nowhere", N_CODES, N_TEXT)
    with pytest.raises(ConfigError, match="n_text"):
        S.build_showo_phi(tiny_config(), N_CODES, 500)
    with pytest.raises(ConfigError, match="Phi"):
        S.build_showo_phi(transformers.LlamaConfig(), N_CODES, N_TEXT)


# ---- checkpoint --------------------------------------------------------------------------------


def released_layout(model, seed: int = 1) -> dict:
    """A synthetic checkpoint in Show-o's layout: `showo.` + Phi's names, random values."""
    g = torch.Generator().manual_seed(seed)
    return {"showo." + k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_a_checkpoint_in_showos_layout_loads_every_tensor(tmp_path):
    model, _ = tiny_showo()
    state = released_layout(model)
    assert "showo.model.layers.0.self_attn.q_proj.weight" in state and "showo.lm_head.bias" in state
    assert "showo.model.layers.3.self_attn.k_layernorm.weight" in state
    S.load_showo_checkpoint(model, state)
    loaded = model.state_dict()
    assert loaded.keys() == {k.removeprefix("showo.") for k in state}
    for key, value in state.items():
        assert torch.equal(loaded[key.removeprefix("showo.")], value), key
    # from a file, as Show-o's ModelMixin saves it (pytorch_model.bin / .safetensors in a directory)
    other, _ = tiny_showo(seed=3)
    torch.save(released_layout(model, seed=2), tmp_path / "pytorch_model.bin")
    S.load_showo_checkpoint(other, tmp_path)
    assert torch.equal(other.lm_head.weight, released_layout(model, seed=2)["showo.lm_head.weight"])
    from safetensors.torch import save_file

    save_file(released_layout(model, seed=4), str(tmp_path / "w.safetensors"))
    S.load_showo_checkpoint(other, tmp_path / "w.safetensors")
    assert torch.equal(
        other.model.final_layernorm.bias, released_layout(model, seed=4)["showo.model.final_layernorm.bias"]
    )


def one_line_checkpoint_error(model, state, *needles):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError) as e:
        S.load_showo_checkpoint(model, state)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    for n in needles:
        assert n in msg, msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_a_corrupted_checkpoint_is_one_checkpoint_error_line(tmp_path):
    model, _ = tiny_showo()
    good = released_layout(model)
    missing = {k: v for k, v in good.items() if k != "showo.model.layers.2.mlp.fc2.bias"}
    one_line_checkpoint_error(model, missing, "1 missing", "showo.model.layers.2.mlp.fc2.bias")
    extra = {**good, "mm_projector.0.weight": torch.zeros(2048, 1024)}
    one_line_checkpoint_error(model, extra, "1 unexpected", "mm_projector.0.weight", "CLIP-ViT")
    unprefixed = {k.removeprefix("showo."): v for k, v in good.items()}
    one_line_checkpoint_error(model, unprefixed, "missing", "unexpected", "more")
    wrong = {**good, "showo.lm_head.weight": torch.zeros(58498, 64)}
    one_line_checkpoint_error(model, wrong, "wrong shape", "showo.lm_head.weight", "(58498, 64)")
    (tmp_path / "bad.bin").write_bytes(b"not a checkpoint")
    one_line_checkpoint_error(model, tmp_path / "bad.bin", "could not be read")
    one_line_checkpoint_error(model, tmp_path / "empty_dir_missing", "does not exist")


# ---- omni-attention ----------------------------------------------------------------------------


def expected_showo_mask(ids, vocab, task: str) -> torch.Tensor:
    """Show-o's masks as its prompting_utils describes them, for valid queries: T2I
    (create_attention_mask_predict_next, rm_pad_in_image): text causal, the segment [soi]..[eoi]
    sees every non-pad token; MMU (create_attention_mask_for_mmu): causal plus every key up to
    [eoi]; LM: causal. Padding is never a key."""
    T = len(ids)
    pad = ids == vocab.pad
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    if task == "t2i":
        soi, eoi = int((ids == vocab.soi).nonzero()), int((ids == vocab.eoi).nonzero())
        allowed[soi : eoi + 1, :] = True
    if task == "mmu":
        allowed[:, : int((ids == vocab.eoi).nonzero()) + 1] = True
    return allowed & ~pad[None, :]


def test_the_mask_is_showos_on_every_valid_query():
    _, vocab = tiny_showo()
    b = mixed_batch(vocab)
    for dtype in (torch.bool, torch.float32):
        m = S.omni_attention_4d(b["is_image"], b["valid"], dtype)
        assert m.shape == (6, 1, b["ids"].shape[1], b["ids"].shape[1]) and m.dtype == dtype
        allowed = m if dtype == torch.bool else m == 0
        if dtype != torch.bool:
            assert set(m.unique().tolist()) == {0.0, torch.finfo(dtype).min}  # additive, as Show-o's own
        for r, task in enumerate(["t2i", "t2i", "mmu", "mmu", "lm", "lm"]):
            v = b["valid"][r]
            expected = expected_showo_mask(b["ids"][r], vocab, task)
            assert torch.equal(allowed[r, 0][v], expected[v]), (r, task)
            assert allowed[r, 0].diagonal().all()  # every token sees itself: no empty softmax row


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_phi_layers_really_attend_by_the_omni_mask(attn):
    model, vocab = tiny_showo(attn)
    b = mixed_batch(vocab)
    base = logits_of(model, b)
    img = b["is_image"]

    def with_token(row: int, pos: int, new: int):
        ids = b["ids"].clone()
        ids[row, pos] = new
        return logits_of(model, {**b, "ids": ids})

    # a later image token changes earlier image logits (bidirectional), in T2I and MMU
    for row in (0, 2):
        pos = img[row].nonzero().flatten()
        out = with_token(
            row, int(pos[-1]), vocab.image_offset + (int(b["ids"][row, pos[-1]]) - vocab.image_offset + 1) % N_CODES
        )
        assert not torch.allclose(out[row, pos[0]], base[row, pos[0]])
        # T2I: the caption before [soi] does not see the image; MMU: [mmu] [soi] do (Show-o's MMU mask)
        if row == 0:
            torch.testing.assert_close(out[row, : int(pos[0]) - 1], base[row, : int(pos[0]) - 1])
        else:
            assert not torch.allclose(out[row, 0], base[row, 0])
    # a later text token changes nothing before it (the answer of an MMU row, an LM token)
    for row in (2, 4):
        last = int(b["valid"][row].nonzero().max())
        out = with_token(row, last - 1, 7)
        torch.testing.assert_close(out[row, : last - 1], base[row, : last - 1])
        assert not torch.allclose(out[row, last - 1], base[row, last - 1])
    # padding is never attended: any id there leaves every valid logit as it was
    ids = torch.where(b["valid"], b["ids"], torch.randint(3, N_TEXT, b["ids"].shape))
    out = logits_of(model, {**b, "ids": ids})
    torch.testing.assert_close(out[b["valid"]], base[b["valid"]])
    assert (~b["valid"][:2, :4]).any()  # the T2I rows have left padding in their text field


def test_a_bool_mask_gives_the_same_logits_under_sdpa():
    model, vocab = tiny_showo("sdpa")
    b = mixed_batch(vocab)
    with torch.no_grad():
        as_bool = model(input_ids=b["ids"], attention_mask=S.omni_attention_4d(b["is_image"], b["valid"], torch.bool))
    torch.testing.assert_close(as_bool.logits[b["valid"]], logits_of(model, b)[b["valid"]])


# ---- rows --------------------------------------------------------------------------------------


def test_rows_have_showos_layout():
    _, v = tiny_showo()
    r = S.t2i_row(v, [11, 12], codes(0), N_IMG, MAX_TEXT)
    c = (codes(0) + v.image_offset).tolist()
    assert r["ids"].tolist() == [v.pad] * 2 + [v.t2i, v.sot, 11, 12, v.eot, v.soi, *c, v.eoi]
    assert r["cond"].nonzero().flatten().tolist() == [4, 5] and r["is_image"].sum() == N_IMG
    long = S.t2i_row(v, list(range(3, 20)), None, N_IMG, MAX_TEXT)  # cut to the field, keeping [eot]
    assert long["ids"][: MAX_TEXT + 1].tolist() == [v.t2i, v.sot, 3, 4, 5, 6, v.eot]
    assert (long["ids"][long["is_image"]] == v.mask).all()
    m = S.mmu_row(v, codes(0), [21, 22], [31])
    assert m["ids"].tolist() == [v.mmu, v.soi, *c, v.eoi, v.sot, 21, 22, 31, v.eot]
    labelled = m["labels"] != IGNORE_INDEX
    assert m["labels"][labelled].tolist() == [31, v.eot] and labelled.nonzero().flatten().tolist() == [14, 15]
    lm = S.lm_row(v, [41, 42])
    assert lm["ids"].tolist() == [v.sot, 41, 42, v.eot] and lm["labels"].tolist() == [41, 42, v.eot, IGNORE_INDEX]
    b = S.collate([r, m], v)
    assert b["valid"].sum(1).tolist() == [len(r["ids"]) - 2, len(m["ids"])]


def test_empty_captions_are_showos_unconditional_prompt():
    _, v = tiny_showo()
    b = S.collate([S.t2i_row(v, text(0, 3), codes(0), N_IMG, MAX_TEXT), S.mmu_row(v, codes(1), [5], [6])], v)
    out = S.empty_captions(b, v)
    empty = S.collate([S.t2i_row(v, [], codes(0), N_IMG, MAX_TEXT), S.mmu_row(v, codes(1), [5], [6])], v)
    for k in ("ids", "valid", "is_image", "cond", "labels"):
        assert torch.equal(out[k], empty[k]), k


# ---- MaskGIT -----------------------------------------------------------------------------------


def test_masking_hits_only_t2i_codes_with_showos_schedule():
    _, v = tiny_showo()
    rows = [S.t2i_row(v, text(i, 3), codes(i), N_IMG, MAX_TEXT) for i in range(600)]
    b = S.collate([*rows, S.mmu_row(v, codes(0), [5], [6]), S.lm_row(v, [7, 8])], v)
    out = S.mask_image_tokens(b, v, torch.Generator().manual_seed(0))
    masked = out["ids"] == v.mask
    assert (masked <= b["is_image"]).all() and not masked[-2:].any()
    assert torch.equal(out["labels"][masked], b["ids"][masked])  # the label is the code
    assert (out["labels"][:600][~masked[:600]] == IGNORE_INDEX).all()  # nowhere else on T2I rows
    assert torch.equal(out["labels"][-2:], b["labels"][-2:]) and torch.equal(out["ids"][-2:], b["ids"][-2:])
    n = masked[:600].sum(1).float()
    assert n.min() >= 1
    # round(cos(pi t / 2) * 9), t ~ U(0, 1), at least 1: its expectation, exactly
    t = torch.linspace(0, 1, 200001)
    expect = torch.round(torch.cos(math.pi * t / 2) * N_IMG).clamp(min=1).mean()
    assert abs(n.mean() - expect) < 0.3
    dropped = S.mask_image_tokens(b, v, torch.Generator().manual_seed(0), cond_dropout=0.5)
    empty = (dropped["ids"][:600, : MAX_TEXT - 2] == v.pad).all(1)  # the field's start is all [PAD]
    assert 0.4 < empty.float().mean() < 0.6
    assert torch.equal(dropped["ids"][:, MAX_TEXT + 1 :], out["ids"][:, MAX_TEXT + 1 :])  # same masks


def test_maskgit_fills_the_image_on_showos_schedule_in_one_cfg_batch():
    model, v = tiny_showo()
    prompts = S.collate([S.t2i_row(v, text(i, 1 + i), None, N_IMG, MAX_TEXT) for i in range(3)], v)
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True
    )
    try:
        steps = 12  # enough steps that the clamp to [1, unknown - 1] binds (9 codes)
        out = S.maskgit_sample(model, prompts, v, steps, guidance=2.0, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert out.shape == (3, N_IMG) and 0 <= int(out.min()) and int(out.max()) < N_CODES
    assert len(seen) == steps and all(s.shape[0] == 6 for s in seen)  # cond + uncond: one batch of 2B
    cond, uncond = seen[0].chunk(2)
    assert torch.equal(cond, prompts["ids"])
    assert torch.equal(uncond, S.empty_captions(prompts, v)["ids"])  # Show-o's empty-caption rows
    # masked tokens per step: N, then floor(N cos(pi/2 s/steps)) clamped to [1, unknown - 1]
    masked = [int((s[:3][prompts["is_image"]] == v.mask).view(3, -1).sum(1).unique()) for s in seen]
    expected, unknown = [N_IMG], N_IMG
    for s in range(1, steps):
        unknown = max(1, min(unknown - 1, math.floor(N_IMG * math.cos(math.pi / 2 * s / steps))))
        expected.append(unknown)
    assert masked == expected
    for s in seen:  # the unconditional half carries the same image as the conditional one
        assert torch.equal(s[:3][prompts["is_image"]], s[3:][prompts["is_image"]])
    again = S.maskgit_sample(model, prompts, v, steps, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    plain = S.maskgit_sample(model, prompts, v, 2, generator=torch.Generator().manual_seed(0))
    assert plain.shape == (3, N_IMG)
    with pytest.raises(ConfigError):
        S.maskgit_sample(model, mixed_batch(v, image=False), v, 2)


# ---- losses ------------------------------------------------------------------------------------


def test_task_losses_with_showos_weights():
    model, v = tiny_showo()
    model.train()
    b = S.mask_image_tokens(mixed_batch(v), v, torch.Generator().manual_seed(0))
    losses = S.showo_task_losses(model, b, v)
    assert set(losses) == {"t2i", "mmu", "lm", "loss"}
    torch.testing.assert_close(losses["loss"], losses["t2i"] + losses["mmu"] + 0.1 * losses["lm"])
    # t2i: cross-entropy at the masked codes only (unshifted); mmu / lm: the labelled next tokens
    logits = S.showo_logits(model, b["ids"], b["is_image"], b["valid"]).float()
    masked = b["ids"] == v.mask
    torch.testing.assert_close(losses["t2i"], F.cross_entropy(logits[masked], b["labels"][masked]))
    for name in ("mmu", "lm"):
        sel = (b["labels"] != IGNORE_INDEX) & (b["task"] == TASK_ID[name])[:, None]
        torch.testing.assert_close(losses[name], F.cross_entropy(logits[sel], b["labels"][sel]))
    for name in TASKS:  # an untrained model is close to uniform over the vocabulary
        assert abs(losses[name].item() - math.log(v.size)) < 1.5
    losses["loss"].backward()
    assert (
        model.lm_head.weight.grad.abs().sum() > 0
        and model.model.layers[0].self_attn.q_layernorm.weight.grad is not None
    )
    weighted = S.showo_task_losses(model, b, v, {"t2i": 0.0, "mmu": 1.0, "lm": 0.0})
    torch.testing.assert_close(weighted["loss"], weighted["mmu"])
    with pytest.raises(ConfigError):
        S.showo_task_losses(model, b, v, {"vqa": 1.0})


# ---- token routing (UniMoD) inside the Phi layers ----------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_capacity_one_is_the_unmodified_model(attn):
    base, v = tiny_showo(attn)
    routed = copy.deepcopy(base)
    routing = install_hf_routing(routed, {i: [1.0, 1.0, 1.0] for i in range(4)})
    b = mixed_batch(v)
    valid = b["valid"]
    torch.testing.assert_close(logits_of(routed, b, routing, b["task"])[valid], logits_of(base, b)[valid])


@pytest.mark.parametrize("caps", [[0.5, 0.5, 0.5], [0.5, 0.25, 0.75]])
def test_routed_counts_and_the_per_row_reference(caps):
    model, v = tiny_showo()
    routing = install_hf_routing(model, {i: list(caps) for i in (1, 2, 3)})
    b = mixed_batch(v)
    with record_routing(model) as trace:
        batched = logits_of(model, b, routing, b["task"])
    n_valid = b["valid"].sum(1)
    for i in (1, 2, 3):
        (record,) = trace.layer(i)
        expected = [math.ceil(round(caps[int(t)] * int(n), 6)) for t, n in zip(b["task"], n_valid)]
        assert record.kept.tolist() == expected, i
        assert not (record.selected & ~b["valid"]).any()  # padding never runs a layer
    # each row alone (its trailing padding cut off) gives what it got in the batch
    for r in range(len(b["ids"])):
        n = int(b["valid"][r].nonzero().max()) + 1
        row = {k: b[k][r : r + 1, :n] for k in ("ids", "is_image", "valid")}
        alone = logits_of(model, row, routing, b["task"][r : r + 1])
        valid = row["valid"][0]
        torch.testing.assert_close(alone[0][valid], batched[r, :n][valid])


def test_only_image_tokens_routed_the_rest_always_runs():
    model, v = tiny_showo()
    routing = install_hf_routing(model, {2: [0.5, 0.25, 1.0]})
    b = mixed_batch(v)
    always = b["valid"] & ~b["is_image"]
    with record_routing(model) as trace, torch.no_grad():
        S.showo_logits(model, b["ids"], b["is_image"], b["valid"], routing, b["task"], always)
    (record,) = trace.layer(2)
    assert torch.equal(record.valid, b["is_image"])  # the router decides for the image tokens only
    caps, n_img = [0.5, 0.25, 1.0], b["is_image"].sum(1)
    assert record.kept.tolist() == [math.ceil(caps[int(t)] * int(n)) for t, n in zip(b["task"], n_img)]
    # each task's call ran its kept image tokens plus every other valid token of its rows
    per_row = record.kept + always.sum(1)
    assert sorted(k for _, k in record.groups) == sorted(int(per_row[b["task"] == t].max()) for t in range(3))
