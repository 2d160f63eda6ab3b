"""LightningModule for Hugging Face unified models (modlab.models.hf_unified): UniMoD / MoD
fine-tuning of a transformers checkpoint with task routers, the paper's protocol.

It is modlab's UnifiedModule (the same losses, weighting, causal-routing loss, capacity schedule,
validation and honest test: MMU answer accuracy, T2I images scored by the reference classifier on
digits, LM perplexity under causal routing, the kept fraction per task and layer) around a
transformers model: the routed layers are modlab.routing.hf_routed_layer's, the FLOPs of a step
are counted on the transformers model itself (modlab.routing.hf_flops), and the image tokenizer is
the model's frozen VQ codec (seen as a digit tokenizer for scoring: modlab.training.hf_unified_datamodule).
The VQ model is never trained (no paper does); its weights travel with the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import lightning as L
import torch.nn as nn
from torchmetrics import MeanMetric

from modlab.data.config import DataConfig
from modlab.data.hf_unified_rows import DigitCodec
from modlab.errors import CheckpointError, ConfigError
from modlab.mindskip.config import MindSkipConfig
from modlab.mindskip.gate import MindSkip
from modlab.mindskip.router_tuning import RouterTuning
from modlab.models.config import ModelConfig
from modlab.models.hf_unified.loader import load_hf_unified
from modlab.routing.config import RoutingConfig
from modlab.routing.hf_flops import train_step_flops
from modlab.routing.hf_routed_layer import apply_hf_routing
from modlab.training.checkpoint import load_checkpoint_file, load_module
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.unified import LM_TEST, MMU_TEST, T2I_TEST, UnifiedModule

TEST_TASKS = {MMU_TEST: "mmu", T2I_TEST: "t2i", LM_TEST: "lm"}  # the test dataloaders' tasks

log = logging.getLogger("modlab.training.hf_unified_module")


class HFUnifiedModule(UnifiedModule):
    def __init__(
        self,
        model: dict,
        data: dict,
        objective: dict,
        eval: dict,
        routing: dict | None = None,
        seed: int = 0,
        mindskip: dict | None = None,
    ):
        L.LightningModule.__init__(self)  # UnifiedModule's own __init__ builds a native model
        # plain dicts as hyper-parameters: the checkpoint alone rebuilds the module
        self.save_hyperparameters(
            {
                "model": model,
                "data": data,
                "objective": objective,
                "eval": eval,
                "routing": routing,
                "seed": seed,
                "mindskip": mindskip,
            }
        )
        self.data_cfg, self.eval_cfg = DataConfig(**data), EvalConfig(**eval)
        self.objective_cfg = ObjectiveConfig(**objective)
        cfg = dict(model)
        self.model = load_hf_unified(
            cfg["path"],
            cfg.get("resolution", 0),
            tuple(cfg.get("route_tokens", ("image",))),
            cfg.get("dtype", "auto"),
            arch=cfg["arch"],
        )
        self.model.train()  # transformers loads in eval mode; the VQ codec stays in eval mode
        self.model.codec.vq.eval()
        n_layer = self.model.n_layer
        self.model_cfg = ModelConfig(arch=cfg["arch"], n_layer=n_layer, path=cfg["path"])
        self.routing_cfg = RoutingConfig(**(routing or {})).resolved(n_layer)
        self.hparams["routing"] = asdict(self.routing_cfg)  # a plan file's content, not its path
        if self.routing_cfg.kind != "dense":
            if self.routing_cfg.causal == "none" and self.model.decodes_with_cache:
                raise ConfigError(
                    f"routing.causal=none has no causal decision, and model.arch={cfg['arch']} answers and draws "
                    "images token by token with a KV cache: use routing.causal=aux_bce or predictor"
                )
            self.model.routing = apply_hf_routing(self.model.hf, self.routing_cfg)
        # Router-Tuning (MindSkip): the model frozen, a gate on the attention of the routed layers,
        # only the routers train on the unified objective (+ lam * the capacity penalty)
        self.skip_cfg = MindSkipConfig(**(mindskip or {}))
        self.skip: MindSkip | None = None
        self.router_tuning = RouterTuning(self.skip_cfg, self.model) if self.skip_cfg.enabled else None
        if self.router_tuning is not None:
            self.router_tuning.attach(self)  # self.skip; its checkpoints hold the routers alone
            self.model.skip = self.skip  # the model opens each forward's gate context
        # per test task (MMU, T2I, LM run different forwards), each weighted by what it counts
        self.test_skip_capacity = nn.ModuleDict({task: MeanMetric() for task in TEST_TASKS.values()})
        self.test_skip_capacity_all = MeanMetric()  # over every task's rows (or tokens)
        self.image_tokenizer = DigitCodec(self.model.codec)
        self.add_metrics()

    @classmethod
    def from_run(cls, run):
        return cls(
            asdict(run.model),
            asdict(run.data),
            asdict(run.objective),
            asdict(run.eval),
            asdict(run.routing),
            run.seed,
            asdict(run.mindskip),
        )

    # ---- Router-Tuning ----------------------------------------------------------------------------

    def _weighted_loss(self, losses: dict):
        loss = super()._weighted_loss(losses)
        if self.router_tuning is not None and "mindskip_capacity" in losses:
            loss = loss + self.router_tuning.penalty(losses["mindskip_capacity"])
        return loss

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        super().test_step(batch, batch_idx, dataloader_idx)
        if self.router_tuning is not None:  # the mean gate over the routed layers, as the test ran them
            self.update_skip_capacity(TEST_TASKS[dataloader_idx], batch["valid"])

    def update_skip_capacity(self, task: str, valid) -> None:
        """The last forward's mean gate into `task`'s mean, weighted by the rows (sequence
        granularity) or valid tokens (token granularity) of its batch."""
        capacity, weight = self.router_tuning.capacity_sample(valid)
        self.test_skip_capacity[task].update(capacity, weight=weight)
        self.test_skip_capacity_all.update(capacity, weight=weight)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.router_tuning is not None:
            for task, m in self.test_skip_capacity.items():
                if m.update_count > 0:
                    self.log(f"test/mindskip_capacity/{task}", m.compute())
            if self.test_skip_capacity_all.update_count > 0:
                self.log("test/mindskip_capacity", self.test_skip_capacity_all.compute())

    # ---- checkpoints: the VQ codec is part of the model's weights ------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.router_tuning is not None:  # the routers alone (the model is model.path's)
            self.router_tuning.save(checkpoint)
        checkpoint["image_tokenizer"] = self.image_tokenizer.state_dict()  # the codec's identity
        self.save_train_flops(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.router_tuning is not None:
            self.router_tuning.check(checkpoint, self.state_dict())
        saved = checkpoint.get("image_tokenizer", {}).get("identity")
        if saved is not None and saved != self.model.codec.identity:
            raise CheckpointError(
                "the checkpoint's VQ tokenizer differs from the one in model.path (its codes would mean other images)"
            )
        self.load_train_flops(checkpoint)

    def scores_images(self) -> bool:
        """Chameleon's VQ tokenizer has no decoder in transformers: its T2I samples are drawn
        (their routing is measured) but not scored; the test logs test/t2i_skipped instead."""
        return self.model.codec.has_decoder

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        if not self.scores_images():
            log.warning(
                "%s: T2I images are drawn but not scored: its VQ tokenizer has no decoder in transformers "
                "(test/t2i_skipped)",
                self.model.model_type,
            )

    # ---- FLOPs ------------------------------------------------------------------------------------

    def step_flops(self, trace, batch: dict) -> tuple[float, float]:
        """Training FLOPs of the forward `trace` recorded on `batch`, and of the same step unrouted,
        counted on the transformers model (the image codes are pre-tokenized: no VQ encoder runs),
        plus what runs outside the language decoder and its head (Janus: the vision encoder on MMU
        images, the generation aligner and head on image codes): 3 x forward, as for the decoder."""
        hf, (B, T) = self.model.hf, batch["ids"].shape
        extra = 3 * self.model.extra_forward_flops(batch)
        return (
            float(train_step_flops(hf, B, T, trace.flops_groups()[0]) + extra),
            float(train_step_flops(hf, B, T) + extra),
        )


def load_hf_unified_module(ckpt_path: str) -> HFUnifiedModule:
    """An HFUnifiedModule from one of its checkpoints (the model is rebuilt from model.path, then
    the checkpoint's weights are loaded strictly)."""
    return load_module(HFUnifiedModule, load_checkpoint_file(ckpt_path), ckpt_path)
