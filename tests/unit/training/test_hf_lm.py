"""HFLMModule (modlab.training.hf_lm): Mixture-of-Depths inside a Hugging Face LM's decoder layers
as `modlab train` builds it, on a tiny random Llama saved to a directory (nothing is downloaded):
capacity 1 is the unmodified model, the causal decision's loss joins the LM loss, routers-only
training freezes everything else and its checkpoints hold the routers alone, the schedule anneals
capacity, and the weights dtype follows model.dtype."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from helpers import save_tiny_hf

from modlab.data.config import DataConfig
from modlab.data.tokens import IGNORE_INDEX
from modlab.errors import ConfigError
from modlab.models.config import ModelConfig
from modlab.models.hf_causal_lm import load_hf_causal_lm, resolve_dtype
from modlab.routing.config import RoutingConfig, ScheduleConfig
from modlab.routing.hf_routed_layer import HFRoutedLayer, unrouted
from modlab.routing.trace import record_routing
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.hf_lm import HFLMModule, router_keys

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_hf(tmp_path_factory.mktemp("hf") / "llama")


def module_of(hf_dir, trainable="auto", dtype="float32", **routing) -> HFLMModule:
    routing = {"kind": "mod", "capacity": 0.5, **routing}
    return HFLMModule(
        asdict(ModelConfig(arch="hf", path=str(hf_dir), dtype=dtype)),
        asdict(DataConfig(name="text")),
        asdict(ObjectiveConfig(name="lm", trainable=trainable)),
        asdict(EvalConfig()),
        routing=asdict(RoutingConfig(**routing)),
    )


def batch(B=3, T=16, seed=0):
    ids = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), IGNORE_INDEX)], 1)
    return {"ids": ids, "labels": labels, "valid": torch.ones(B, T, dtype=torch.bool)}


def test_routed_layers_and_capacity_1_is_the_unmodified_model(hf_dir):
    m = module_of(hf_dir, capacity=1.0).eval()
    layers = m.lm.decoder_layers()
    assert [i for i, layer in enumerate(layers) if isinstance(layer, HFRoutedLayer)] == [1, 3]  # interleaved
    base, _ = load_hf_causal_lm(str(hf_dir))
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(m.forward_logits(b), base(b["ids"], valid=b["valid"]), rtol=0, atol=0)


def test_the_causal_decisions_loss_joins_the_lm_loss(hf_dir):
    m = module_of(hf_dir, aux_weight=0.5)
    out = m.losses(batch())
    assert 0 < float(out["router_agreement"]) <= 1
    torch.testing.assert_close(out["loss"], out["lm_loss"] + 0.5 * out["router_aux"])
    p = module_of(hf_dir, causal="predictor", aux_weight=0.5).losses(batch())
    torch.testing.assert_close(p["loss"], p["lm_loss"] + p["router_aux"])  # the predictor's loss at full weight


def test_causal_none_is_refused(hf_dir):
    with pytest.raises(ConfigError, match="routing.causal=none has no causal decision"):
        module_of(hf_dir, causal="none")


def test_routers_only_trains_the_routers_and_checkpoints_hold_them_alone(hf_dir):
    m = module_of(hf_dir, trainable="routers", causal="predictor")
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained == router_keys(m) and all(".router." in n or ".predictor." in n for n in trained)
    assert {n.split(".")[4] for n in trained} == {"1", "3"}  # lm.hf.model.layers.<i>.router / .predictor
    m.losses(batch())["loss"].backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n in trained)
    ckpt = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    assert set(ckpt["state_dict"]) == trained
    # a fresh module (new random routers) takes the saved routers, and gives the same logits
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n in trained:
                p.add_(0.1)
    ckpt = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    again = module_of(hf_dir, trainable="routers", causal="predictor")
    again.on_load_checkpoint(ckpt)
    again.load_state_dict(ckpt["state_dict"], strict=False)
    with torch.no_grad():
        torch.testing.assert_close(again.eval().forward_logits(batch()), m.eval().forward_logits(batch()))


def test_trainable_all_trains_every_weight(hf_dir):
    m = module_of(hf_dir)
    assert all(p.requires_grad for p in m.parameters())


def test_schedule_anneals_capacity_from_dense(hf_dir):
    m = module_of(hf_dir, capacity=0.25, schedule=ScheduleConfig(kind="linear", anneal_steps=10))
    m.train()
    m.on_train_batch_start(None, 0)  # step 0: dense
    with record_routing(m.lm) as trace:
        m.forward_logits(batch())
    assert len(trace.records) == 2 and all(int(r.kept.min()) == 16 for r in trace.records)
    for layer in m.routing.layers.values():
        layer.anneal = 1.0  # the end of the anneal: the target
    with record_routing(m.lm) as trace:
        m.forward_logits(batch())
    assert all(int(r.kept.max()) == 4 for r in trace.records)


def test_unrouted_runs_every_token_through_every_layer_and_restores(hf_dir):
    m = module_of(hf_dir, capacity=0.25).eval()
    base, _ = load_hf_causal_lm(str(hf_dir))
    b = batch()
    with torch.no_grad(), unrouted(m.routing):
        assert not any(isinstance(layer, HFRoutedLayer) for layer in m.lm.decoder_layers())
        torch.testing.assert_close(m.lm(b["ids"]), base(b["ids"]))
    assert isinstance(m.lm.decoder_layers()[1], HFRoutedLayer)


def test_test_step_reports_causal_perplexity_capacity_and_flops(hf_dir):
    m = module_of(hf_dir, capacity=0.25).eval()
    logged = {}
    m.log = lambda name, value, **kw: logged.__setitem__(name, value)
    b = batch()
    with torch.no_grad():
        m.test_step(b, 0)
    assert {"test/ppl", "test/ppl_topk", "test/ppl_dense", "test/capacity", "test/flops_ratio"} <= set(logged)
    cap = float(m.test_capacity.compute())
    assert 0 <= cap <= 1
    assert float(m.test_flops_ratio.compute()) <= 1.0
    # test/ppl is the threshold decision's: the logit > 0 tokens run, not the top 25 %
    from modlab.routing.install import threshold_routing

    with torch.no_grad(), threshold_routing(m.lm):
        logits = m.forward_logits(b)
    want = torch.exp(F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE_INDEX))
    torch.testing.assert_close(m.test_ppl.compute(), want)


def test_bfloat16_weights_and_routers(hf_dir):
    m = module_of(hf_dir, dtype="bfloat16")
    assert {p.dtype for p in m.lm.parameters()} == {torch.bfloat16}  # routers live in the layer's dtype
    assert m.forward_logits(batch()).dtype == torch.bfloat16


def test_dtype_resolution():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float32", "gpu") == "float32"
    assert resolve_dtype("auto", None) == "float32"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_dtype("bfloat16", "gpu")
        assert resolve_dtype("auto", "gpu") == "float32"
    elif torch.cuda.is_bf16_supported():
        assert resolve_dtype("auto", "gpu") == "bfloat16"


def test_unrouted_leaves_a_stand_in_where_an_analysis_put_one(hf_dir):
    m = module_of(hf_dir).eval()
    layers = m.lm.decoder_layers()
    blocks = m.routing.model.model.layers
    stand_in = torch.nn.Identity()
    routed = blocks[1]
    blocks[1] = stand_in
    with unrouted(m.routing):
        assert blocks[1] is stand_in and blocks[3] is layers[3].block
    assert blocks[1] is stand_in and blocks[3] is layers[3]
    blocks[1] = routed


def test_routers_only_trains_on_the_frozen_model_without_its_dropout(tmp_path):
    """Phi ships resid_pdrop=0.1: with the model frozen, the routers must train on the model as it
    runs at inference, so two training-mode forwards of one batch are equal."""
    import transformers

    path = save_tiny_hf(tmp_path / "phi", family="phi")
    config = transformers.AutoConfig.from_pretrained(path)
    config.resid_pdrop = config.attention_dropout = config.embd_pdrop = 0.1
    config.save_pretrained(path)
    m = module_of(path, trainable="routers").train()
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(m.forward_logits(b), m.forward_logits(b), rtol=0, atol=0)
    full = module_of(path, trainable="all").train()  # a full fine-tune keeps the model's dropout
    with torch.no_grad():
        assert not torch.equal(full.forward_logits(b), full.forward_logits(b))
