"""MindSkip: parity with every gate open (native and Hugging Face), a closed gate really skips
(no attention call, no KV entry), cached = uncached generation, the straight-through gate,
granularities, Router-Tuning trains the routers alone, routers round-trip through safetensors,
the LLM-Drop baseline, and the FLOPs model of generation."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import HF_FAMILIES as FAMILIES
from helpers import save_tiny_hf
from torch.utils.flop_counter import FlopCounterMode

from modlab.data.config import DataConfig
from modlab.errors import CheckpointError, ConfigError
from modlab.mindskip.config import MindSkipConfig
from modlab.mindskip.gate import MindSkip, straight_through_gate
from modlab.mindskip.inference import generate, generation_flops
from modlab.mindskip.router_file import load_routers, save_routers
from modlab.mindskip.static_drop import attention_similarity, layers_to_drop
from modlab.models.causal_lm import CausalLM
from modlab.models.config import ModelConfig
from modlab.models.hf_causal_lm import load_hf_causal_lm
from modlab.training.config import EvalConfig, ObjectiveConfig

CFG = ModelConfig(arch="lm", d_model=32, n_layer=4, n_head=2)


def native_lm() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(CFG).eval()


@pytest.fixture(scope="module", params=FAMILIES)
def hf_dir(request, tmp_path_factory):
    return save_tiny_hf(tmp_path_factory.mktemp(request.param), request.param)


def close_layer(skip: MindSkip, layer: int) -> None:
    """A router that closes its gate for every input: sigmoid(w . h) < 0.5 for all h."""
    with torch.no_grad():
        skip.routers[str(layer)].proj.weight.zero_()
    skip.threshold = 1.0 - 1e-6  # above any sigmoid of a zero logit ...
    for g in skip.gates:
        g.threshold = 0.5
    skip.gates[layer].threshold = 0.9  # ... only for this layer: 0.5 < 0.9, closed


# ---- parity and real skipping ------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", [False, True])
def test_open_gates_reproduce_the_native_model(train_mode):
    lm = native_lm()
    ids = torch.randint(0, 256, (3, 20))
    with torch.no_grad():
        base = lm(ids)
    skip = MindSkip(lm, [1, 2])
    lm.train(train_mode)
    with torch.no_grad(), skip.context():
        torch.testing.assert_close(lm(ids), base, rtol=0, atol=0)
    assert skip.capacity().item() == 1.0  # zero init: sigmoid(0) = 0.5 = tau, every gate open


def test_open_gates_reproduce_the_hf_model(hf_dir):
    lm, _ = load_hf_causal_lm(str(hf_dir))
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        base = lm(ids)
        skip = MindSkip(lm, [1, 2])
        with skip.context():
            torch.testing.assert_close(lm(ids), base, rtol=0, atol=0)
        lm.train()
        with skip.context():
            torch.testing.assert_close(lm(ids), base, rtol=0, atol=0)


def _check_closed_layer_is_never_run(lm):
    prompt = torch.randint(0, 256, (1, 9))
    skip = MindSkip(lm, [1, 2])
    close_layer(skip, 2)
    calls = skip.attention_calls()
    out = generate(lm, prompt, 6, skip)
    ran = [a - b for a, b in zip(skip.attention_calls(), calls)]
    assert ran == [6, 6, 0, 6]  # 1 prefill + 5 decode steps everywhere but the closed layer
    assert skip.open_layers() == [True, True, False, True]
    cache = lm.new_cache()
    with torch.no_grad(), skip.context():
        lm(prompt, cache=cache)
    assert cache.entries() == [9, 9, 0, 9]  # no KV entry for the skipped layer
    assert torch.equal(out, generate(lm, prompt, 6, skip, use_cache=False))
    # the closed layer really changes the function (it is not a no-op in disguise)
    with torch.no_grad(), skip.context():
        routed = lm(prompt)
    with torch.no_grad(), skip.variant(routers=False):
        assert not torch.allclose(routed, lm(prompt))


def test_a_closed_gate_skips_the_native_attention():
    _check_closed_layer_is_never_run(native_lm())


def test_a_closed_gate_skips_the_hf_attention(hf_dir):
    _check_closed_layer_is_never_run(load_hf_causal_lm(str(hf_dir))[0])


def test_closed_gate_equals_removing_the_attention_sublayer():
    """Oracle: a block without its attention is x + MLP(LN(x))."""
    lm = native_lm()
    ids = torch.randint(0, 256, (2, 11))
    skip = MindSkip(lm, [1, 2])
    with torch.no_grad(), skip.variant(routers=False, closed=[2]):
        skipped = lm(ids)
    t = lm.transformer
    from modlab.models.omni_attention import causal_mask

    x = t.embed(ids)
    pos = torch.arange(11).expand(2, 11)
    mask = causal_mask(torch.ones_like(ids, dtype=torch.bool))
    with torch.no_grad():
        for i, block in enumerate(t.blocks):
            if i == 2:
                x = x + block.mlp(block.norm_mlp(x))
            else:
                x = x + block(x, pos, mask)
        torch.testing.assert_close(skipped, t.head(t.norm(x)))


def test_an_hf_model_keeps_layer_0_attention():
    lm, _ = load_hf_causal_lm(str(save_tiny_hf_dir_once()))
    with pytest.raises(ConfigError, match="cannot be routed"):
        MindSkipConfig(enabled=True, layers=[0, 1]).routed_layers(lm.n_layer, lm.always_runs)


_HF_DIR: list = []


def save_tiny_hf_dir_once():
    if not _HF_DIR:
        import tempfile
        from pathlib import Path

        _HF_DIR.append(save_tiny_hf(Path(tempfile.mkdtemp()) / "llama"))
    return _HF_DIR[0]


# ---- the gate ----------------------------------------------------------------------------------


def test_straight_through_gate_is_a_step_forward_and_a_sigmoid_backward():
    x = torch.tensor([-2.0, -1e-3, 0.0, 1e-3, 3.0], requires_grad=True)
    g = straight_through_gate(x, 0.5)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    g.sum().backward()
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, s * (1 - s))


def test_router_gets_the_gradient_of_the_soft_gate():
    """d loss / d w through the straight-through gate is sigmoid'(s) <dL/d out, Attn(h)> pool(h),
    what the soft gate sigmoid(s) * Attn(h) would get, whether the gate is open or closed."""
    lm = native_lm().train()
    skip = MindSkip(lm, [1])
    with torch.no_grad():
        skip.routers["1"].proj.weight.normal_(std=3.0)
    seen = {}
    skip.gates[1].attn.register_forward_hook(lambda m, args, out: seen.update(h=args[0], a=out))
    skip.gates[1].register_forward_hook(lambda m, args, out: seen.update(out=out))
    ids = torch.randint(0, 256, (4, 10))
    with skip.context():
        loss = lm(ids).square().mean()
    grad_out = torch.autograd.grad(loss, seen["out"], retain_graph=True)[0]
    loss.backward()
    pooled = seen["h"].detach().mean(1)
    p = torch.sigmoid(pooled @ skip.routers["1"].proj.weight[0].detach())
    expected = ((grad_out * seen["a"].detach()).sum((1, 2)) * p * (1 - p)) @ pooled
    torch.testing.assert_close(skip.routers["1"].proj.weight.grad[0], expected, rtol=1e-4, atol=1e-8)


def test_sequence_gate_ignores_padding_and_token_gate_is_per_token():
    lm = native_lm()
    skip = MindSkip(lm, [1], granularity="sequence")
    with torch.no_grad():
        skip.routers["1"].proj.weight.normal_()
    ids = torch.randint(0, 256, (1, 12))
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[:, 8:] = False
    other = ids.clone()
    other[:, 8:] = (other[:, 8:] + 1) % 256
    decisions = []
    for x in (ids, other):
        with torch.no_grad(), skip.context(valid=valid):
            lm(x, valid=valid)
        decisions.append(skip.gates[1].held.clone())
    assert torch.equal(decisions[0], decisions[1])

    lm = native_lm()
    skip = MindSkip(lm, [1], granularity="token")
    with torch.no_grad():
        skip.routers["1"].proj.weight.normal_()
        with skip.context():
            lm(torch.randint(0, 256, (2, 30)))
    cap = skip.capacity().item()
    assert 0.0 < cap < 1.0 and skip.gates[1].held is None  # some tokens in, some out


def test_routed_layers_default_and_errors():
    assert MindSkipConfig(n_routed=3).routed_layers(8) == [4, 5, 6]  # deepest, excluding the last
    assert MindSkipConfig(n_routed=3, exclude_last=False).routed_layers(8) == [5, 6, 7]
    MindSkipConfig(n_routed=8, exclude_last=False).routed_layers(8)  # every layer
    with pytest.raises(ConfigError, match="only 7 layers below the last"):
        MindSkipConfig(n_routed=8).routed_layers(8)
    assert MindSkipConfig(layers=[5, 2]).routed_layers(8) == [2, 5]
    with pytest.raises(ConfigError, match="out of range"):
        MindSkipConfig(layers=[8]).routed_layers(8)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            MindSkipConfig(target_capacity=bad)


def test_a_threshold_above_one_half_is_refused_every_gate_would_start_closed():
    """Zero-initialised routers give sigmoid(0) = 0.5: with tau > 0.5 the routed model would start
    with every routed attention closed, not as the base."""
    assert bool(straight_through_gate(torch.zeros(2), 0.5).detach().all())  # tau = 0.5: every gate open
    for bad in (0.6, 0.9):
        assert not bool(straight_through_gate(torch.zeros(2), bad).detach().any())  # what it would do: all closed
        with pytest.raises(ConfigError, match=r"mindskip.threshold must be in \(0, 0.5\].*starts every gate closed"):
            MindSkipConfig(threshold=bad)
    MindSkipConfig(threshold=0.3)  # below 0.5 every gate starts open
    MindSkipConfig(threshold=0.6, init_logit=1.0)  # gates that start at sigmoid(1) = 0.73 are open at 0.6
    with pytest.raises(ConfigError, match=r"must be in \(0, 0.269\].*init_logit=-1"):
        MindSkipConfig(init_logit=-1.0)  # sigmoid(-1) = 0.27 < 0.5: every gate would start closed


def test_init_logit_starts_every_gate_open_with_a_margin_and_the_model_equal_to_the_base():
    """A positive init_logit: each gate's logit starts there (sigmoid 0.88 at 2), every gate is
    open, the routed model equals the base, and only a router that moved the logit past the margin
    closes a gate (with zero init the smallest update closes it)."""
    torch.manual_seed(0)
    lm = native_lm()
    ids = torch.randint(0, 256, (3, 10))
    with torch.no_grad():
        base = lm(ids)
    skip = MindSkip(lm, [1, 2], init_logit=2.0)
    with torch.no_grad(), skip.context():
        routed = lm(ids)
    torch.testing.assert_close(routed, base)
    assert skip.layer_capacity() == {1: 1.0, 2: 1.0}
    logits = skip.routers["1"](torch.randn(3, 10, lm.d_model), None, "sequence")
    torch.testing.assert_close(logits, torch.full((3,), 2.0))
    with torch.no_grad():  # a small move that would close a zero-initialised gate leaves this one open
        skip.routers["1"].proj.weight.fill_(-1e-3)
        skip.routers["2"].proj.weight.fill_(-10.0)
        h = torch.ones(3, 10, lm.d_model)
        assert float(skip.routers["1"](h, None, "sequence")[0]) > 0  # 2 - 1e-3 * d
        assert float(skip.routers["2"](h, None, "sequence")[0]) < 0


# ---- Router-Tuning -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A real (tiny, 3-step) pretrained LM checkpoint written by Lightning."""
    from modlab.training.lm import LMModule
    from modlab.training.text_datamodule import TextDataModule

    data = DataConfig(name="text", lm_length=32, batch_size={"lm": 8}, eval_batch_size=32, lm_train_rows=64)
    module = LMModule.from_configs(CFG, data, ObjectiveConfig(name="lm"), EvalConfig(lm_max_rows=8), MindSkipConfig())
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=TextDataModule(data, EvalConfig(lm_max_rows=8), module.tokenizer))
    path = tmp_path_factory.mktemp("base") / "base.ckpt"
    trainer.save_checkpoint(path)
    return path, data


def tuning_module(base_ckpt, **mindskip):
    from modlab.training.lm import LMModule

    path, data = base_ckpt
    skip = MindSkipConfig(**{"enabled": True, "n_routed": 2, "lam": 1.0, "target_capacity": 0.5, **mindskip})
    return LMModule.from_configs(
        CFG,
        data,
        ObjectiveConfig(name="lm", lr=0.05, warmup_steps=0, weight_decay=0.0),
        EvalConfig(lm_max_rows=8),
        skip,
        base=str(path),
    )


def test_router_tuning_trains_the_routers_alone(base_ckpt):
    from modlab.training.text_datamodule import TextDataModule

    module = tuning_module(base_ckpt)
    frozen = {k: v.clone() for k, v in module.lm.state_dict().items() if ".router." not in k}
    routers = {k: v.clone() for k, v in module.skip.router_state().items()}
    trainer = L.Trainer(
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=TextDataModule(module.data_cfg, module.eval_cfg, module.tokenizer))
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert held == {id(p) for p in module.skip.routers.parameters()}
    after = {k: v for k, v in module.lm.state_dict().items() if ".router." not in k}
    assert after.keys() == frozen.keys()
    assert all(torch.equal(after[k], frozen[k]) for k in frozen)  # bitwise unchanged
    assert any(not torch.equal(module.skip.router_state()[k], routers[k]) for k in routers)


def test_capacity_penalty_and_released_recipe(base_ckpt):
    module = tuning_module(base_ckpt)
    batch = {"ids": torch.randint(0, 256, (2, 16)), "labels": torch.randint(0, 256, (2, 16))}
    out = module.losses(batch)
    assert out["capacity"].item() == 1.0  # zero init: every gate open
    torch.testing.assert_close(out["loss"], out["lm_loss"] + 1.0 * (1.0 - 0.5))
    released = tuning_module(base_ckpt, lam=0.0).losses(batch)
    torch.testing.assert_close(released["loss"], released["lm_loss"])
    both_ways = tuning_module(base_ckpt, penalty="abs", target_capacity=1.0).losses(batch)
    torch.testing.assert_close(both_ways["loss"], both_ways["lm_loss"])  # |1 - 1| = 0


def test_router_file_round_trip(base_ckpt, tmp_path):
    a, b = tuning_module(base_ckpt), tuning_module(base_ckpt)
    with torch.no_grad():
        for r in a.skip.routers.values():
            r.proj.weight.normal_()
    path = save_routers(a.skip, tmp_path / "routers.safetensors", a.router_info())
    info = load_routers(b.skip, path)
    assert info["base"] == str(base_ckpt[0]) and info["layers"] == [1, 2]
    for k, v in a.skip.router_state().items():
        assert torch.equal(b.skip.router_state()[k], v)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad(), a.skip.context(), b.skip.context():
        torch.testing.assert_close(a.lm.eval()(ids), b.lm.eval()(ids), rtol=0, atol=0)
    other = tuning_module(base_ckpt, layers=[0, 1])
    with pytest.raises(CheckpointError, match="routes layers"):
        load_routers(other.skip, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_routers(b.skip, tmp_path / "junk.safetensors")


def test_router_tuning_needs_a_pretrained_base():
    from types import SimpleNamespace

    from modlab.families import get_family

    run = SimpleNamespace(model=CFG, init_from=None, mindskip=MindSkipConfig(enabled=True, n_routed=2))
    with pytest.raises(ConfigError, match="needs init_from"):
        get_family("lm").family().base_of(run)


# ---- the static baseline and FLOPs -------------------------------------------------------------


def test_llm_drop_scores_are_the_cosine_of_x_and_x_plus_attn():
    lm = native_lm()
    skip = MindSkip(lm, [1, 2])
    ids = torch.randint(0, 256, (2, 10))
    scores = attention_similarity(lm, skip, [{"ids": ids}])
    t = lm.transformer
    from modlab.models.omni_attention import causal_mask

    x = t.embed(ids)
    pos = torch.arange(10).expand(2, 10)
    mask = causal_mask(torch.ones_like(ids, dtype=torch.bool))
    expected = []
    with torch.no_grad():
        for block in t.blocks:
            a = block.attn(block.norm_attn(x), pos, mask)
            expected.append(torch.nn.functional.cosine_similarity(x, x + a, dim=-1).mean().item())
            x = x + block(x, pos, mask)
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected))
    assert layers_to_drop([0.1, 0.9, 0.5, 0.95], 2, [0, 1, 2, 3]) == [1, 3]
    assert layers_to_drop([0.1, 0.9, 0.5, 0.95], 1, [1, 2]) == [1]


@torch.no_grad()
def test_llm_drop_scores_of_an_hf_model_are_the_cosine_of_what_its_forward_computed(hf_dir):
    """The score (the analysis' llm_drop_importance, which recomputes each attention from the
    layer's input and keyword arguments) against the decoder layers' real inputs and attention
    outputs, read by hooks during a plain forward."""
    lm, _ = load_hf_causal_lm(str(hf_dir))
    skip = MindSkip(lm, [1, 2])
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 9:] = False  # right padding
    scores = attention_similarity(lm, skip, [{"ids": ids, "valid": valid}])
    inputs, cos = {}, {}

    def keep_input(i):
        return lambda module, args, kwargs: inputs.__setitem__(i, args[0] if args else kwargs["hidden_states"])

    # the branch adds the attention output after the norm its family puts there (Gemma 2 / 3)
    layers, norm = lm.decoder_layers(), lm.family.attn_out_norm
    branch = (lambda i, a: getattr(layers[i], norm)(a)) if norm else (lambda i, a: a)

    def score(i):
        return lambda module, args, out: cos.__setitem__(
            i, torch.nn.functional.cosine_similarity(inputs[i], inputs[i] + branch(i, out[0]), dim=-1)
        )

    hooks = [
        layer.register_forward_pre_hook(keep_input(i), with_kwargs=True) for i, layer in enumerate(lm.decoder_layers())
    ]
    hooks += [gate.register_forward_hook(score(i)) for i, gate in enumerate(skip.gates)]
    lm(ids, valid=valid)
    for h in hooks:
        h.remove()
    expected = [float(cos[i][valid].mean()) for i in range(lm.n_layer)]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected))


@pytest.mark.parametrize("closed", [[], [1, 2]])
def test_generation_flops_match_torchs_flop_counter(closed):
    lm = native_lm()
    skip = MindSkip(lm, [1, 2])
    prompt = torch.randint(0, 256, (1, 12))
    open_layers = [i not in closed for i in range(CFG.n_layer)]
    prefill, decode = generation_flops(lm.token_flops(), open_layers, 12, 3)
    cache = lm.new_cache()
    with torch.no_grad(), skip.variant(routers=False, closed=closed):
        with FlopCounterMode(display=False) as fc:
            lm(prompt, cache=cache, last_only=True)  # as generation prefills: the last position's logits
        assert fc.get_total_flops() == prefill
        with FlopCounterMode(display=False) as fc:
            for t in range(2):
                lm(prompt[:, t : t + 1], cache=cache)
        assert fc.get_total_flops() == decode


def test_static_drop_baselines_at_fixed_counts_drop_the_least_important_layers():
    """eval.static_drop_counts: one static LLM-Drop baseline per count, the n layers whose attention
    turns the stream least on the calibration rows, scored on the test rows with them closed."""
    from modlab.mindskip.evaluate import evaluate_routed_lm, perplexity

    lm = native_lm().eval()
    skip = MindSkip(lm, [])  # a base alone: nothing routed
    torch.manual_seed(1)
    batches = [{"ids": torch.randint(0, 256, (3, 12)), "labels": torch.randint(0, 256, (3, 12))} for _ in range(2)]
    m = evaluate_routed_lm(lm, skip, batches, batches, [], EvalConfig(static_drop_counts=[1, 2]))
    similarity = attention_similarity(lm, skip, batches)
    for n in (1, 2):
        dropped = layers_to_drop(similarity, n, list(range(lm.n_layer)))
        assert m[f"test/static_drop_{n}_layers"] == ",".join(map(str, dropped))
        want, _ = perplexity(lm, skip, batches, routers=False, closed=dropped)
        assert m[f"test/ppl_static_drop_{n}"] == pytest.approx(want)
        assert m[f"test/ppl_static_drop_{n}"] != pytest.approx(m["test/ppl_base"])
    with pytest.raises(ConfigError, match="static_drop_counts"):
        EvalConfig(static_drop_counts=[0])


def test_the_lm_evaluation_prints_progress_lines_for_each_stage(caplog):
    """A real model's `modlab eval` takes minutes: every stage (perplexities, LLM-Drop scores,
    speed) ends with a progress line, whatever the interval."""
    import logging

    from modlab.mindskip.evaluate import evaluate_routed_lm

    lm = native_lm().eval()
    skip = MindSkip(lm, [])
    batches = [{"ids": torch.randint(0, 256, (2, 8)), "labels": torch.randint(0, 256, (2, 8))}]
    prompts = [torch.randint(0, 256, (1, 6))]
    cfg = EvalConfig(static_drop_counts=[1], speed_new_tokens=3, speed_repeats=1)
    with caplog.at_level(logging.INFO, logger="modlab.progress"):
        evaluate_routed_lm(lm, skip, batches, batches, prompts, cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "modlab.progress"]
    for stage in (
        "test perplexity, base 1/1",
        "LLM-Drop scores 1/1",
        "test perplexity, static drop of 1 1/1",
        "speed (prompts generated) 2/2",
    ):
        assert any(line.startswith(stage) for line in lines), (stage, lines)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_open_gate_gets_the_lm_gradient_in_every_family(family: str, tmp_path):
    """The router must learn from the LM loss while its gate is open: its gradient is
    sigmoid'(s) * <dL/d(what the sublayer adds), what it adds> * pool(h), here checked against
    that reference computed on an untouched copy of the model. Gemma 2 / 3 normalise the
    attention's output before the residual add; a gate on the raw output was normalised away
    (RMSNorm(g a) = RMSNorm(a)), so the open gate's gradient was ~0 on those families (on Gemma 3
    270M every router then moved by lr x |input| per step, whatever its layer cost). The gate now
    multiplies the normalised output there."""
    import copy

    from modlab.hf_layer_map import HF_FAMILIES

    lm, _ = load_hf_causal_lm(str(save_tiny_hf(tmp_path / family, family)))
    lm.requires_grad_(False)
    ref = copy.deepcopy(lm)
    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))

    def loss_of(model):
        return model(ids)[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).mean().neg()

    # reference: d loss / d g where layer 1 adds g * (its attention branch), g = 1 per row
    fam = HF_FAMILIES[lm.hf.config.model_type]
    layer = ref.decoder_layers()[1]
    added = getattr(layer, fam.attn_out_norm) if fam.attn_out_norm else getattr(layer, fam.attention)
    g = torch.ones(3, requires_grad=True)
    seen = {}

    def scale(m, args, out):
        if isinstance(out, tuple):
            return (out[0] * g[:, None, None], *out[1:])
        return out * g[:, None, None]

    added.register_forward_hook(scale)
    getattr(layer, fam.attention).register_forward_hook(
        lambda m, args, kwargs, out: seen.update(h=(args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True,
    )
    ref.train()
    (dg,) = torch.autograd.grad(loss_of(ref), g)
    s2 = torch.sigmoid(torch.tensor(2.0))
    expected = (dg * s2 * (1 - s2)) @ seen["h"].mean(1)

    skip = MindSkip(lm, [1], init_logit=2.0)
    lm.train()
    with skip.context():
        loss_of(lm).backward()
    got = skip.routers["1"].proj.weight.grad[0]
    assert float(expected.abs().max()) > 1e-5  # a real signal to compare
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-7)


def test_on_gemma_the_gate_scales_what_the_sublayer_adds_after_its_output_norm(tmp_path):
    """Gemma 3: x + g * RMSNorm(Attn(LN(x))). A gate of 0 equals the static drop, 1 the base, and
    the open gate's gradient is <dL/d(layer output), RMSNorm(Attn(LN(x)))> sigmoid'(s) pool(h)."""
    lm, _ = load_hf_causal_lm(str(save_tiny_hf(tmp_path / "g3", "gemma3_text")))
    lm.requires_grad_(False)
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = lm(ids)
    skip = MindSkip(lm, [1], init_logit=2.0)
    with torch.no_grad(), skip.context():
        torch.testing.assert_close(lm(ids), base)  # open: the base
        with skip.variant(routers=False, closed=[1]):
            dropped = lm(ids)
        skip.routers["1"].init_logit = -2.0  # closed by its router
        torch.testing.assert_close(lm(ids), dropped)
    layer = lm.decoder_layers()[1]
    assert type(layer.post_attention_layernorm).__name__ == "GatedOutNorm"
