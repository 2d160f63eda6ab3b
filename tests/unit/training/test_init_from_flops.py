"""A fine-tune's training FLOPs are its own: `init_from` takes the dense checkpoint's weights and
image tokenizer, not the running FLOPs means an exact resume restores (they made a MoD fine-tune
from a dense checkpoint report 0.80 of dense FLOPs instead of 0.59)."""

from dataclasses import asdict

import torch

from modlab.data.config import DataConfig
from modlab.models.config import ModelConfig
from modlab.routing.config import RoutingConfig
from modlab.training.checkpoint import init_from_checkpoint
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.unified import UnifiedModule

MODEL = ModelConfig(d_model=32, n_layer=4, n_head=2)


def test_init_from_does_not_carry_the_dense_runs_flops_means(tmp_path):
    dense = UnifiedModule.from_configs(MODEL, DataConfig(), ObjectiveConfig(), EvalConfig())
    dense.flops_routed.update(4.0e9)  # what a dense run has accumulated by its last step
    dense.flops_dense.update(4.0e9)
    ckpt = {"state_dict": dense.state_dict(), "hyper_parameters": dict(dense.hparams)}
    dense.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "dense.ckpt")

    routing = RoutingConfig(kind="mod", capacity=0.125)
    tuned = UnifiedModule(
        asdict(MODEL), asdict(DataConfig()), asdict(ObjectiveConfig()), asdict(EvalConfig()), asdict(routing)
    )
    init_from_checkpoint(tuned, str(tmp_path / "dense.ckpt"))
    tuned.flops_routed.update(2.0e9)
    tuned.flops_dense.update(4.0e9)
    assert tuned.flops_summary()["train/flops_ratio"] == 0.5  # the fine-tune's own steps only
    # resuming is different: Lightning's on_load_checkpoint continues the means
    resumed = UnifiedModule.from_configs(MODEL, DataConfig(), ObjectiveConfig(), EvalConfig())
    resumed.on_load_checkpoint(ckpt)
    resumed.flops_routed.update(2.0e9)
    assert resumed.flops_routed.compute() == 3.0e9
