"""Defect 4 (issue 12): Router-Tuning must not train routers on a randomly pruned model.

A base pretrained with LayerDrop on attention (`model.attn_layer_drop`) kept it on while the
routers trained (the module is in training mode), so identical forwards gave different losses
and a dropped sublayer gave its router no gradient."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import REPO
from omegaconf import OmegaConf

from modlab.data.config import DataConfig
from modlab.mindskip.config import MindSkipConfig
from modlab.models.config import ModelConfig
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.lm import LMModule

CONF = REPO / "conf" / "experiment"


def base_checkpoint(tmp_path: Path, layer_drop: float) -> tuple[str, ModelConfig]:
    """A pretrained-LM checkpoint (random weights) whose model config has LayerDrop on."""
    model = ModelConfig(arch="lm", d_model=32, n_layer=4, n_head=2, attn_layer_drop=layer_drop)
    base = LMModule.from_configs(
        model, DataConfig(name="text"), ObjectiveConfig(name="lm"), EvalConfig(), MindSkipConfig()
    )
    ckpt = {"state_dict": base.state_dict(), "hyper_parameters": dict(base.hparams)}
    base.on_save_checkpoint(ckpt)
    path = tmp_path / "base.ckpt"
    torch.save(ckpt, path)
    return str(path), model


def test_identical_training_forwards_of_a_router_tuned_model_give_one_loss(tmp_path):
    path, model = base_checkpoint(tmp_path, layer_drop=0.4)
    skip = MindSkipConfig(enabled=True, n_routed=2)
    module = LMModule.from_configs(
        model, DataConfig(name="text"), ObjectiveConfig(name="lm"), EvalConfig(), skip, base=path
    ).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (16, 24), generator=g)
    batch = {"ids": ids, "labels": ids.roll(-1, 1), "valid": torch.ones_like(ids, dtype=torch.bool)}
    losses = [float(module.losses(batch)["loss"]) for _ in range(4)]
    assert len(set(losses)) == 1, losses
    # every routed layer's router gets gradient from every row (no sublayer dropped at random)
    module.losses(batch)["lm_loss"].backward()
    assert all(
        r.proj.weight.grad is not None and r.proj.weight.grad.abs().sum() > 0 for r in module.skip.routers.values()
    )


def test_pretraining_still_uses_layer_drop_when_asked():
    """LayerDrop stays available for pretraining (its own experiment): training forwards differ."""
    model = ModelConfig(arch="lm", d_model=32, n_layer=4, n_head=2, attn_layer_drop=0.4)
    module = LMModule.from_configs(
        model, DataConfig(name="text"), ObjectiveConfig(name="lm"), EvalConfig(), MindSkipConfig()
    ).train()
    ids = torch.randint(0, 256, (16, 24), generator=torch.Generator().manual_seed(0))
    batch = {"ids": ids, "labels": ids.roll(-1, 1), "valid": torch.ones_like(ids, dtype=torch.bool)}
    assert len({float(module.losses(batch)["loss"]) for _ in range(4)}) > 1


def test_lm_pretrain_has_no_layer_drop_and_the_layerdrop_experiment_keeps_it():
    pretrain = OmegaConf.load(CONF / "lm_pretrain.yaml")
    assert OmegaConf.select(pretrain, "model.attn_layer_drop", default=0.0) == 0.0
    layerdrop = OmegaConf.load(CONF / "lm_pretrain_layerdrop.yaml")
    assert "lm_pretrain" in list(layerdrop.defaults) and layerdrop.model.attn_layer_drop == 0.4
    assert layerdrop.experiment_name == "lm_pretrain_layerdrop"


def test_mindskip_with_routers_switches_layer_drop_off_in_any_caller():
    """The wrapper itself enforces it (benchmarks and scripts build MindSkip without LMModule)."""
    from modlab.mindskip.gate import MindSkip
    from modlab.models.causal_lm import CausalLM

    lm = CausalLM(ModelConfig(arch="lm", d_model=32, n_layer=4, n_head=2, attn_layer_drop=0.4)).train()
    MindSkip(lm, [1, 2])
    ids = torch.randint(0, 256, (16, 24), generator=torch.Generator().manual_seed(0))
    assert len({float(lm(ids).sum()) for _ in range(4)}) == 1
