"""LightningModule for the Show-o-like unified model: T2I + MMU + LM training and honest tests.

Test metrics (all on the held-out test split, all torchmetrics):
    test/mmu_acc            greedy-decoded answer names the right digit (and no other)
    test/t2i_acc            MaskGIT samples for "a handwritten <d>" classified as d by the
                            reference classifier, trained here on the real training digits
    test/ref_classifier_acc that classifier's own accuracy on the real test digits
    test/lm_ppl             per-byte perplexity of the held-out text, with routed layers routing by
                            their causal decision (threshold), as MMU answers and Emu3-like T2I
                            already do: top-k over a row would let later bytes decide which earlier
                            bytes run a layer, which is not an autoregressive perplexity
    test/lm_ppl_causal      1.0 when test/lm_ppl was causal; 0.0 when some routed layer has no
                            causal decision (routing.causal=none) and had to route by top-k
    test/kept/<task>/layer<i>      routed models: the fraction of that task's tokens that threshold
    test/capacity/<task>/layer<i>  routing ran in layer i during the test, beside the target
                                   capacity (only pairs with capacity < 1; modlab.routing.plan.threshold_kept)
    test/kept_dense_min/<task>     the smallest such fraction over the layers where the task is
                                   dense (capacity 1): 1.0, since a dense task runs every token
On digit scenes (data.kind=scenes) MMU and T2I are scored per question type / prompt category,
with a digits-FID (modlab.evaluation.scene_metrics).

Validation: val/loss and val/loss_<task> are measured with top-k routing, the routing training
optimises (val/loss stays the checkpoint monitor); val/loss_lm_causal is the LM loss with
threshold routing (what test/lm_ppl measures), logged for models with causal routing decisions.
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy
from torchmetrics.text import Perplexity

from modlab.data.config import DataConfig
from modlab.data.digits import answered_digit, load_digit_splits
from modlab.data.image_tokenizer import image_tokenizer_from_state
from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TASKS, TokenSpace
from modlab.evaluation.reference_classifier import train_reference_classifier
from modlab.evaluation.scene_metrics import SceneMetrics
from modlab.flops import last_train_step_flops, train_step_flops
from modlab.models.config import ModelConfig
from modlab.models.unified_models import build_unified_model
from modlab.routing.config import RoutingConfig
from modlab.routing.plan import (
    apply_routing,
    causal_routing_stats,
    has_causal_routing,
    reset_threshold_counts,
    routed_blocks,
    routes_causally,
    set_anneal_fraction,
    threshold_kept,
    threshold_routing,
)
from modlab.routing.schedule import anneal_fraction
from modlab.tasks.config import EvalConfig, TaskConfig
from modlab.tasks.digits_datamodule import image_tokenizer_for
from modlab.tasks.optim import adamw_warmup_cosine

MMU_TEST, T2I_TEST, LM_TEST = 0, 1, 2


class UnifiedModule(L.LightningModule):
    def __init__(self, model: dict, data: dict, task: dict, eval: dict, routing: dict | None = None, seed: int = 0):
        super().__init__()
        # plain dicts as hyper-parameters: the checkpoint alone rebuilds the module
        self.save_hyperparameters()
        self.model_cfg, self.data_cfg = ModelConfig(**model), DataConfig(**data)
        self.task_cfg, self.eval_cfg = TaskConfig(**task), EvalConfig(**eval)
        self.routing_cfg = RoutingConfig(**(routing or {})).resolved(self.model_cfg.n_layer)
        self.hparams["routing"] = asdict(self.routing_cfg)  # a plan file's content, not its path
        self.image_tokenizer = image_tokenizer_for(self.data_cfg)  # replaced by the fitted one
        self.space = TokenSpace(self.image_tokenizer.n_codes)
        self.model = build_unified_model(self.model_cfg, self.space, self.image_tokenizer.n_tokens)
        apply_routing(self.model.transformer.blocks, self.model_cfg.d_model, self.routing_cfg)
        self.mmu_acc = MulticlassAccuracy(num_classes=11, average="micro")  # class 10: no digit
        self.t2i_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.lm_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.val_loss = MeanMetric()
        self.flops_routed, self.flops_dense = MeanMetric(), MeanMetric()

    @classmethod
    def from_configs(
        cls,
        model: ModelConfig,
        data: DataConfig,
        task: TaskConfig,
        eval: EvalConfig,
        routing: RoutingConfig | None = None,
        seed: int = 0,
    ):
        return cls(asdict(model), asdict(data), asdict(task), asdict(eval), asdict(routing or RoutingConfig()), seed)

    # ---- checkpoint: the fitted image tokenizer travels with the weights ---------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["image_tokenizer"] = self.image_tokenizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.image_tokenizer = image_tokenizer_from_state(checkpoint["image_tokenizer"])

    # ---- training ------------------------------------------------------------------------------

    def _weighted_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Task losses by their weights, plus the causal-routing loss: aux_bce shares the router
        with the main loss, so it is weighted (MoD: small); the predictor's loss trains only the
        stop-gradient predictor, so it enters at full weight without touching the model."""
        w = self.task_cfg.loss_weights
        loss = sum(w.get(k, 0.0) * v for k, v in losses.items() if k in w)
        if "router_aux" in losses:
            r = self.routing_cfg
            loss = loss + (r.aux_weight if r.causal == "aux_bce" else 1.0) * losses["router_aux"]
        return loss

    @staticmethod
    def _task_batches(combined) -> list[dict]:
        """A CombinedLoader yields (dict of task batches, idx, loader idx) or the dict itself."""
        parts = combined[0] if isinstance(combined, tuple) else combined
        return [b for b in parts.values() if b is not None]

    def _losses(
        self, combined, cond_dropout: float, generator=None
    ) -> tuple[dict[str, torch.Tensor], int, float, float]:
        """Per-task losses, one forward per task batch: each is padded only to its own longest
        row (one concatenated batch padded T2I rows to the MMU length and wasted ~15 % compute).
        Also returns the row count and the step's routed / dense training FLOPs. With causal
        routing, `router_aux` (the decision's BCE vs top-k) and `router_agreement` are added."""
        losses, rows, routed, dense = {}, 0, 0.0, 0.0
        aux, agreement, zero = [], [], 0.0
        for part in self._task_batches(combined):
            batch = self.model.training_batch(part, cond_dropout, generator=generator)
            losses.update(self.model.task_losses(batch))
            a, g = causal_routing_stats(self.model)
            if g is not None:
                aux.append(a)
                agreement.append(g)
            elif a is not None:  # no routed token in this batch (a dense task): a zero in the graph
                zero = zero + a
            r, d = self.step_flops(*batch["ids"].shape)
            rows, routed, dense = rows + batch["ids"].shape[0], routed + r, dense + d
        if aux:  # averaged over the task batches that had routed tokens
            losses["router_aux"] = torch.stack(aux).mean() + zero
            losses["router_agreement"] = torch.stack(agreement).mean()
        elif isinstance(zero, torch.Tensor):
            losses["router_aux"] = zero
        return losses, rows, routed, dense

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        s = self.routing_cfg.schedule
        set_anneal_fraction(self.model, anneal_fraction(s.kind, self.global_step, s.anneal_steps))

    def training_step(self, combined, batch_idx: int):
        losses, n, routed, dense = self._losses(combined, self.task_cfg.cond_dropout)
        loss = self._weighted_loss(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k, v in losses.items():
            self.log(f"train/{k}" if k.startswith("router_") else f"train/loss_{k}", v, batch_size=n)
        self.flops_routed.update(routed)
        self.flops_dense.update(dense)
        self.log("train/flops_ratio", routed / dense, batch_size=n)
        return loss

    def step_flops(self, B: int, T: int) -> tuple[float, float]:
        """Analytic training FLOPs of the step just run, and of the same step without routing."""
        V = self.space.vocab_size
        return (
            float(last_train_step_flops(self.model_cfg, V, self.model.transformer.blocks, B, T)),
            float(train_step_flops(self.model_cfg, V, B, T)),
        )

    def flops_summary(self) -> dict[str, float]:
        """Mean training FLOPs per step over the run (for metrics.json)."""
        routed, dense = float(self.flops_routed.compute()), float(self.flops_dense.compute())
        return {
            "train/flops_per_step": routed,
            "train/flops_per_step_dense": dense,
            "train/flops_ratio": routed / dense,
        }

    def validation_step(self, combined, batch_idx: int):
        # a fixed masking per batch index so val/loss is comparable between evaluations
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        losses, n, _, _ = self._losses(combined, 0.0, generator=g)
        for k, v in losses.items():
            self.log(f"val/{k}" if k.startswith("router_") else f"val/loss_{k}", v, batch_size=n)
        self.val_loss.update(self._weighted_loss(losses))
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=n)
        if has_causal_routing(self.model):  # the LM loss as test/lm_ppl measures it: causal routing
            for part in self._task_batches(combined):
                if bool((part["task"] == TASK_ID["lm"]).all()):
                    with threshold_routing(self.model):
                        causal = self.model.task_losses(self.model.training_batch(part, 0.0, generator=g))
                    self.log("val/loss_lm_causal", causal["lm"], batch_size=len(part["ids"]))

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return adamw_warmup_cosine(self.parameters(), self.task_cfg, total)

    # ---- test ----------------------------------------------------------------------------------

    def on_test_epoch_start(self) -> None:
        e = self.eval_cfg
        reset_threshold_counts(self.model)
        splits = load_digit_splits(self.data_cfg.split_seed)
        self.ref_classifier = train_reference_classifier(
            splits["train"].images, splits["train"].labels, seed=e.seed, epochs=e.ref_classifier_epochs
        ).to(self.device)
        real = torch.as_tensor(splits["test"].images, device=self.device)
        pred = self.ref_classifier.predict(real)
        truth = torch.as_tensor(splits["test"].labels, device=self.device)
        self.log("test/ref_classifier_acc", multiclass_accuracy(pred, truth, num_classes=10, average="micro"))
        self.sample_generator = torch.Generator(device=self.device).manual_seed(e.seed)
        if self.data_cfg.kind == "scenes":  # its T2I ceiling is scored on real test scenes
            self.scene_metrics = SceneMetrics(self.ref_classifier.features(real), self.data_cfg.grid).to(self.device)
            return
        # the ceiling for T2I: real test digits after a round trip through the image tokenizer
        tok = self.image_tokenizer
        pred = self.ref_classifier.predict(tok.decode(tok.encode(splits["test"].images)).to(self.device))
        self.log("test/ref_classifier_acc_tokenized", multiclass_accuracy(pred, truth, num_classes=10, average="micro"))
        self.mmu_examples: list[tuple[int, str]] = []

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        e = self.eval_cfg
        if self.data_cfg.kind == "scenes" and dataloader_idx != LM_TEST:
            return self._scene_test_step(batch, dataloader_idx)
        if dataloader_idx == MMU_TEST:
            answers = self.model.answer(batch, e.max_answer_tokens)
            pred = torch.tensor([answered_digit(a) for a in answers], device=self.device)
            self.mmu_acc.update(pred.masked_fill(pred < 0, 10), batch["digit"])
            self.mmu_examples += list(zip(batch["digit"].tolist(), answers))[: max(0, 20 - len(self.mmu_examples))]
            self.log("test/mmu_acc", self.mmu_acc, add_dataloader_idx=False)
        elif dataloader_idx == T2I_TEST:
            codes = self.model.sample_images(batch, e.maskgit_steps, e.guidance, e.temperature, self.sample_generator)
            images = self.image_tokenizer.decode(codes).to(self.device)
            self.t2i_acc.update(self.ref_classifier.predict(images), batch["digit"])
            self.log("test/t2i_acc", self.t2i_acc, add_dataloader_idx=False)
        else:
            with threshold_routing(self.model):  # causal routing: an autoregressive perplexity
                logits = self.model(batch["ids"], batch["is_image"], batch["valid"], batch["task"])
            self.lm_ppl.update(logits.float(), batch["labels"])
            self.log("test/lm_ppl", self.lm_ppl, add_dataloader_idx=False)
            self.log("test/lm_ppl_causal", float(routes_causally(self.model)), add_dataloader_idx=False)

    def on_test_epoch_end(self) -> None:
        """The fraction of each task's tokens that threshold routing ran per routed layer, beside
        its target capacity (counts summed over processes before the ratio)."""
        for b in routed_blocks(self.model):
            counts = b.threshold_counts
            counts = torch.zeros(len(TASKS), 2, dtype=torch.float64) if counts is None else counts[: len(TASKS)]
            counts = torch.cat([counts, counts.new_zeros(len(TASKS) - len(counts), 2)]).to(self.device)
            b.threshold_counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        dense_min: dict[str, float] = {}
        for r in threshold_kept(self.model.transformer.blocks):
            task = TASKS[r["task"]]
            if r["capacity"] < 1.0:
                self.log(f"test/kept/{task}/layer{r['layer']}", r["kept"], add_dataloader_idx=False)
                self.log(f"test/capacity/{task}/layer{r['layer']}", r["capacity"], add_dataloader_idx=False)
            else:
                dense_min[task] = min(dense_min.get(task, 1.0), r["kept"])
        for task, kept in dense_min.items():
            self.log(f"test/kept_dense_min/{task}", kept, add_dataloader_idx=False)

    def _scene_test_step(self, batch: dict, dataloader_idx: int) -> None:
        e, m, tok = self.eval_cfg, self.scene_metrics, self.image_tokenizer
        if dataloader_idx == MMU_TEST:
            m.update_mmu(self.model.answer(batch, e.max_answer_tokens), batch["answer"], batch["qtype"])
            logged = m.mmu_metrics()
        else:
            codes = self.model.sample_images(batch, e.maskgit_steps, e.guidance, e.temperature, self.sample_generator)
            m.update_t2i(
                self.ref_classifier,
                batch["prompt"],
                tok.decode(codes).to(self.device),
                tok.decode(batch["scene_codes"]).to(self.device),
            )
            logged = m.t2i_metrics()
        for name, metric in logged.items():
            self.log(name, metric, add_dataloader_idx=False)
