"""Analyses of causal LMs (modlab's CausalLM and a tiny random Hugging Face Llama) with known
answers: LLM-Drop importance of a silent sublayer is 0 and of a whole layer is the turn between
its input and output; dropping a layer equals zeroing its output projections and restores the
model bit for bit; ARank of a causal LM pre- and post-softmax; seeded calibration windows of the
held-out text."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import save_tiny_hf
from torch.testing import assert_close

from modlab.analysis.arank import arank_analysis
from modlab.analysis.calibration import calibration_batches
from modlab.analysis.importance import drop_layer_importance, llm_drop_importance
from modlab.analysis.subject import lm_subject
from modlab.data.config import DataConfig
from modlab.data.rows import collate_rows, lm_row
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.data.tokens import IGNORE_INDEX
from modlab.models.causal_lm import CausalLM
from modlab.models.config import ModelConfig

CFG = ModelConfig(arch="lm", d_model=32, n_layer=4, n_head=2)  # head_dim 16


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    from modlab.models.hf_causal_lm import load_hf_causal_lm

    return load_hf_causal_lm(str(save_tiny_hf(tmp_path_factory.mktemp("llama"), "llama")))[0]


@pytest.fixture(params=["native", "hf"])
def lm(request):
    """A fresh copy (tests change weights) of a tiny CausalLM or Hugging Face Llama, eval mode."""
    if request.param == "hf":
        return copy.deepcopy(request.getfixturevalue("hf_llama"))
    torch.manual_seed(0)
    return CausalLM(CFG).eval()


def output_projections(lm, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights that write the attention and the MLP sublayer into the residual stream."""
    if hasattr(lm, "hf"):
        block = lm.hf.model.layers[layer]
        return block.self_attn.o_proj.weight, block.mlp.down_proj.weight
    block = lm.transformer.blocks[layer]
    return block.attn.proj.weight, block.mlp.down.weight


def lm_batches(lengths=(20, 24, 28)) -> dict[str, list[dict]]:
    """One batch of byte rows of different lengths (right padding)."""
    text = bytes(range(40, 120))
    return {"lm": [collate_rows([lm_row(text[i : i + n]) for i, n in enumerate(lengths)], 0)]}


def lm_loss(lm, batch: dict) -> float:
    logits = lm(batch["ids"], valid=batch["valid"])
    return float(F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX))


@torch.no_grad()
def test_llm_drop_importance_of_a_causal_lm(lm):
    attn_out, _ = output_projections(lm, 1)
    _, mlp_out = output_projections(lm, 2)
    attn_out.zero_()
    mlp_out.zero_()
    batches = lm_batches()
    subject = lm_subject(lm)
    imp = {(r["layer"], r["sublayer"]): r["importance"] for r in llm_drop_importance(subject, batches)}
    assert imp[(1, "attn")] == pytest.approx(0.0, abs=1e-6) and imp[(2, "mlp")] == pytest.approx(0.0, abs=1e-6)
    assert imp[(1, "mlp")] > 1e-6 and imp[(0, "attn")] > 1e-6 and imp[(3, "attn")] > 1e-6
    assert imp[(2, "block")] == pytest.approx(imp[(2, "attn")], abs=1e-6)

    # oracle: a whole layer's importance is the turn from the input to the output the forward
    # really computed (read by plain hooks; modlab's blocks return the delta, HF layers the stream)
    seen = {}

    def keep(i):
        return lambda module, args, kwargs, out: seen.__setitem__(
            i, (args[0] if args else kwargs["hidden_states"], out)
        )

    hooks = [layer.register_forward_hook(keep(i), with_kwargs=True) for i, layer in enumerate(subject.blocks)]
    batch = batches["lm"][0]
    subject.run(batch)
    for h in hooks:
        h.remove()
    valid = batch["valid"]
    for i, (x, out) in seen.items():
        y = out if subject.returns_stream else x + out
        expected = ((1 - F.cosine_similarity(x, y, dim=-1)) * valid).sum() / valid.sum()
        assert_close(imp[(i, "block")], float(expected), rtol=1e-5, atol=1e-7)


@torch.no_grad()
def test_drop_one_layer_of_a_causal_lm_equals_a_silenced_layer_and_restores_it(lm):
    subject, batches = lm_subject(lm), lm_batches()
    layers, state = list(subject.blocks), {k: v.clone() for k, v in lm.state_dict().items()}
    rows = drop_layer_importance(subject, batches)
    assert list(subject.blocks) == layers
    after = lm.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())  # bit for bit

    loss = {r["dropped"]: r["value"] for r in rows if r["task"] == "lm" and r["metric"] == "loss"}
    batch = batches["lm"][0]
    assert loss[-1] == pytest.approx(lm_loss(lm, batch), rel=1e-6)
    for layer in range(4):  # dropping a layer = the layer writing nothing into the stream
        silenced = copy.deepcopy(lm)
        for w in output_projections(silenced, layer):
            w.zero_()
        assert loss[layer] == pytest.approx(lm_loss(silenced, batch), rel=1e-5)
        assert loss[layer] != pytest.approx(loss[-1], rel=1e-6)


def test_arank_of_a_causal_lm_before_and_after_the_causal_softmax():
    torch.manual_seed(0)
    subject = lm_subject(CausalLM(CFG).eval())
    batches = lm_batches(lengths=(20, 24))
    # before softmax Q K^T is bounded by head_dim = 16 (< 20, 24 tokens); a causal softmax map is
    # triangular with a positive diagonal: full rank n, one per valid token
    pre = arank_analysis(subject, batches, rtol=1e-6)
    post = arank_analysis(subject, batches, rtol=1e-6, kind="post_softmax")
    assert [r["arank"] for r in pre] == [16.0] * 4 and all(r["arank_rel"] == 1.0 for r in pre)
    assert [r["arank"] for r in post] == [22.0] * 4 and all(r["arank_norm"] == 1.0 for r in post)


def test_lm_calibration_rows_are_seeded_windows_of_the_held_out_text():
    data = DataConfig(name="text", lm_length=32)
    a = calibration_batches(data, None, ["lm"], 5, seed=3, split="val", batch_size=2)
    assert list(a) == ["lm"] and [len(b["ids"]) for b in a["lm"]] == [2, 2, 1]
    again = calibration_batches(data, None, ["lm"], 5, seed=3, split="val", batch_size=2)
    other = calibration_batches(data, None, ["lm"], 5, seed=4, split="val", batch_size=2)
    ids = torch.cat([b["ids"] for b in a["lm"]])
    assert torch.equal(ids, torch.cat([b["ids"] for b in again["lm"]]))
    assert not torch.equal(ids, torch.cat([b["ids"] for b in other["lm"]]))
    val = split_corpus(load_corpus())["val"]
    windows = {val[i : i + 32] for i in range(0, len(val) - 31, 32)}  # the tiling of the val split
    assert all(bytes(row) in windows for row in ids.tolist())
    assert all(bool(b["valid"].all()) for b in a["lm"])


@torch.no_grad()
def test_drop_one_layer_replays_the_layers_before_the_dropped_one(lm, monkeypatch):
    """The drop passes replay the full pass's outputs of the layers before the dropped one: the
    same losses as running every pass in full, with the earlier layers never run again."""
    import modlab.analysis.importance as importance

    subject, batches = lm_subject(lm), lm_batches()
    calls = [0] * subject.n_layer
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(subject.blocks)
    ]
    replayed = drop_layer_importance(subject, batches)
    n_batches = len(batches["lm"])
    # layer j runs in the full pass and in the passes that drop a layer at or before it (its own: skipped)
    assert calls == [n_batches * (1 + j) for j in range(subject.n_layer)]
    for h in handles:
        h.remove()
    monkeypatch.setattr(importance, "REPLAY_BYTES", 0)  # too large to keep: every pass runs in full
    full = drop_layer_importance(subject, batches)
    assert [r["value"] for r in replayed] == pytest.approx([r["value"] for r in full], rel=1e-6)
