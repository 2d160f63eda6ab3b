"""LightningModule for the Show-o-like unified model: T2I + MMU + LM training and honest tests.

Test metrics (all on the held-out test split, all torchmetrics):
    test/mmu_acc            greedy-decoded answer names the right digit (and no other)
    test/t2i_acc            MaskGIT samples for "a handwritten <d>" classified as d by the
                            reference classifier, trained here on the real training digits
    test/ref_classifier_acc that classifier's own accuracy on the real test digits
    test/t2i_skipped        1.0 where the images are drawn but cannot be decoded, so test/t2i_acc
                            and test/ref_classifier_acc_tokenized are absent (Hugging Face
                            Chameleon: transformers has no decoder for its VQ tokenizer)
    test/lm_ppl             per-byte perplexity of the held-out text, with routed layers routing by
                            their causal decision (threshold), as MMU answers and Emu3-like T2I
                            already do: top-k over a row would let later bytes decide which earlier
                            bytes run a layer, which is not an autoregressive perplexity
    test/lm_ppl_causal      1.0 when test/lm_ppl was causal; 0.0 when some routed layer has no
                            causal decision (routing.causal=none) and had to route by top-k
    test/kept/<task>/layer<i>      routed models: the fraction of that task's tokens that threshold
    test/capacity/<task>/layer<i>  routing ran in layer i during the test, beside the target
                                   capacity (only pairs with capacity < 1; counted by modlab.routing.trace)
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
from modlab.flops import traced_train_step_flops, train_step_flops
from modlab.models.config import ModelConfig
from modlab.registry import get_family
from modlab.routing.config import RoutingConfig
from modlab.routing.install import (
    apply_routing,
    has_causal_routing,
    routes_causally,
    set_anneal_fraction,
    threshold_routing,
)
from modlab.routing.schedule import anneal_fraction
from modlab.routing.trace import RouterState, RoutingTrace, record_routing, start_recording, stop_recording
from modlab.training.checkpoint import load_module, read_unified_checkpoint
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.digits_datamodule import image_tokenizer_for
from modlab.training.optim import adamw_warmup_cosine

MMU_TEST, T2I_TEST, LM_TEST = 0, 1, 2


def build_unified_model(model_cfg: ModelConfig, space: TokenSpace, n_image_tokens: int):
    """The model class of the unified family `model_cfg.arch` (Show-o-like, Emu3-like, ...)."""
    return get_family(model_cfg.arch).family().build_model(model_cfg, space, n_image_tokens)


class UnifiedModule(L.LightningModule):
    def __init__(
        self, model: dict, data: dict, objective: dict, eval: dict, routing: dict | None = None, seed: int = 0
    ):
        super().__init__()
        # plain dicts as hyper-parameters: the checkpoint alone rebuilds the module
        self.save_hyperparameters()
        self.model_cfg, self.data_cfg = ModelConfig(**model), DataConfig(**data)
        self.objective_cfg, self.eval_cfg = ObjectiveConfig(**objective), EvalConfig(**eval)
        self.routing_cfg = RoutingConfig(**(routing or {})).resolved(self.model_cfg.n_layer)
        self.hparams["routing"] = asdict(self.routing_cfg)  # a plan file's content, not its path
        self.image_tokenizer = image_tokenizer_for(self.data_cfg)  # replaced by the fitted one
        self.space = TokenSpace(self.image_tokenizer.n_codes)
        self.model = build_unified_model(self.model_cfg, self.space, self.image_tokenizer.n_tokens)
        apply_routing(self.model.transformer.blocks, self.model_cfg.d_model, self.routing_cfg)
        self.add_metrics()

    def add_metrics(self) -> None:
        """The test, validation and FLOPs metrics (every unified module has the same)."""
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
        objective: ObjectiveConfig,
        eval: EvalConfig,
        routing: RoutingConfig | None = None,
        seed: int = 0,
    ):
        return cls(
            asdict(model), asdict(data), asdict(objective), asdict(eval), asdict(routing or RoutingConfig()), seed
        )

    # ---- checkpoint: the fitted image tokenizer travels with the weights ---------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["image_tokenizer"] = self.image_tokenizer.state_dict()
        self.save_train_flops(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.image_tokenizer = image_tokenizer_from_state(checkpoint["image_tokenizer"])
        self.load_train_flops(checkpoint)

    def save_train_flops(self, checkpoint: dict) -> None:
        """The running FLOPs means of metrics.json: a resumed run continues them (exact resume)."""
        checkpoint["train_flops"] = {
            name: {k: v.detach().clone() for k, v in getattr(self, name).metric_state.items()}
            for name in ("flops_routed", "flops_dense")
        }

    def load_train_flops(self, checkpoint: dict) -> None:
        for name, state in checkpoint.get("train_flops", {}).items():
            for k, v in state.items():
                setattr(getattr(self, name), k, v.to(self.device))

    # ---- training ------------------------------------------------------------------------------

    def _weighted_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Task losses by their weights, plus the causal-routing loss: aux_bce shares the router
        with the main loss, so it is weighted (MoD: small); the predictor's loss trains only the
        stop-gradient predictor, so it enters at full weight without touching the model."""
        w = self.objective_cfg.loss_weights
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
        routing, `router_aux` (the decision's BCE vs top-k) and `router_agreement` are added; with
        routed tokens the routers' state (RouterState.metrics: logit scale, weight gradient, the
        decision's recall and kept share), pooled over the task batches' tokens."""
        losses, rows, routed, dense = {}, 0, 0.0, 0.0
        aux, agreement, zero, gates, routers = [], [], 0.0, [], RouterState()
        for part in self._task_batches(combined):
            batch = self.model.training_batch(part, cond_dropout, generator=generator)
            with record_routing(self.model) as trace:
                part_losses = self.model.task_losses(batch)
            if "mindskip_capacity" in part_losses:  # MindSkip's mean gate: averaged over the task batches
                gates.append(part_losses.pop("mindskip_capacity"))
            losses.update(part_losses)
            routers.merge(trace.router_state())
            a, g = trace.causal_stats()
            if g is not None:
                aux.append(a)
                agreement.append(g)
            elif a is not None:  # no routed token in this batch (a dense task): a zero in the graph
                zero = zero + a
            r, d = self.step_flops(trace, batch)
            rows, routed, dense = rows + batch["ids"].shape[0], routed + r, dense + d
        if gates:
            losses["mindskip_capacity"] = torch.stack(gates).mean()
        if aux:  # averaged over the task batches that had routed tokens
            losses["router_aux"] = torch.stack(aux).mean() + zero
            losses["router_agreement"] = torch.stack(agreement).mean()
        elif isinstance(zero, torch.Tensor):
            losses["router_aux"] = zero
        losses.update(routers.metrics())  # the routers' logit scale and weight gradient (docs/routing.md)
        return losses, rows, routed, dense

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        s = self.routing_cfg.schedule
        set_anneal_fraction(self.model, anneal_fraction(s.kind, self.global_step, s.anneal_steps))

    def training_step(self, combined, batch_idx: int):
        losses, n, routed, dense = self._losses(combined, self.objective_cfg.cond_dropout)
        loss = self._weighted_loss(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k, v in losses.items():
            self.log(f"train/{k}" if k.startswith(("router_", "mindskip_")) else f"train/loss_{k}", v, batch_size=n)
        self.flops_routed.update(routed)
        self.flops_dense.update(dense)
        self.log("train/flops_ratio", routed / dense, batch_size=n)
        return loss

    def step_flops(self, trace: RoutingTrace, batch: dict) -> tuple[float, float]:
        """Analytic training FLOPs of the forward `trace` recorded on `batch`, and of the same step without routing."""
        V, (B, T) = self.space.vocab_size, batch["ids"].shape
        return (
            float(traced_train_step_flops(self.model_cfg, V, trace, B, T)),
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
            # averaged over the processes too (DDP): the routing statistics of the whole validation set
            name = f"val/{k}" if k.startswith(("router_", "mindskip_")) else f"val/loss_{k}"
            self.log(name, v, batch_size=n, sync_dist=True)
        self.val_loss.update(self._weighted_loss(losses))
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=n)
        if has_causal_routing(self.model):  # the LM loss as test/lm_ppl measures it: causal routing
            for part in self._task_batches(combined):
                if bool((part["task"] == TASK_ID["lm"]).all()):
                    with threshold_routing(self.model):
                        causal = self.model.task_losses(self.model.training_batch(part, 0.0, generator=g))
                    self.log("val/loss_lm_causal", causal["lm"], batch_size=len(part["ids"]), sync_dist=True)

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return adamw_warmup_cosine(self.parameters(), self.objective_cfg, total)

    # ---- test ----------------------------------------------------------------------------------

    def on_test_epoch_start(self) -> None:
        e = self.eval_cfg
        # what threshold routing (decoding) runs, over the whole test epoch
        self.test_routing = start_recording(self.model, counts_only=True)
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
        self.mmu_examples: list[tuple[int, str]] = []
        if not self.scores_images():
            return
        # the ceiling for T2I: real test digits after a round trip through the image tokenizer
        tok = self.image_tokenizer
        pred = self.ref_classifier.predict(tok.decode(tok.encode(splits["test"].images)).to(self.device))
        self.log("test/ref_classifier_acc_tokenized", multiclass_accuracy(pred, truth, num_classes=10, average="micro"))

    def scores_images(self) -> bool:
        """Whether drawn images can be decoded and scored (a VQ tokenizer without a decoder: not)."""
        return True

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
            if not self.scores_images():  # drawn (their routing is measured), but there is no decoder
                self.log("test/t2i_skipped", 1.0, add_dataloader_idx=False)
                return
            images = self.image_tokenizer.decode(codes).to(self.device)
            self.t2i_acc.update(self.ref_classifier.predict(images), batch["digit"])
            self.log("test/t2i_acc", self.t2i_acc, add_dataloader_idx=False)
        else:
            kind = {"kind": batch["kind"]} if "kind" in batch else {}  # HF unified rows: which tokens are routed
            with threshold_routing(self.model):  # causal routing: an autoregressive perplexity
                logits = self.model(batch["ids"], batch["is_image"], batch["valid"], batch["task"], **kind)
            self.lm_ppl.update(logits.float(), batch["labels"])
            self.log("test/lm_ppl", self.lm_ppl, add_dataloader_idx=False)
            self.log("test/lm_ppl_causal", float(routes_causally(self.model)), add_dataloader_idx=False)

    def on_test_epoch_end(self) -> None:
        """The fraction of each task's tokens that threshold routing ran per routed layer, beside
        its target capacity (counts summed over processes before the ratio)."""
        trace = stop_recording(self.model, self.test_routing)
        L, n = self.model_cfg.n_layer, len(TASKS)
        counts, capacity = torch.zeros(L, n, 2, dtype=torch.float64), torch.ones(L, n)
        for (layer, task, mode), (ran, valid, cap) in trace.counts.items():
            if mode == "threshold" and 0 <= layer < L and task < n:
                counts[layer, task] += torch.tensor([ran, valid], dtype=torch.float64)
                capacity[layer, task] = cap
        counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum").cpu()
        dense_min: dict[str, float] = {}
        for layer, t in counts[..., 1].nonzero().tolist():
            task, kept, cap = TASKS[t], float(counts[layer, t, 0] / counts[layer, t, 1]), float(capacity[layer, t])
            if cap < 1.0:
                self.log(f"test/kept/{task}/layer{layer}", kept, add_dataloader_idx=False)
                self.log(f"test/capacity/{task}/layer{layer}", cap, add_dataloader_idx=False)
            else:
                dense_min[task] = min(dense_min.get(task, 1.0), kept)
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


def probe_training_flops(module: UnifiedModule, datamodule, n_batches: int = 4) -> dict[str, float]:
    """Training FLOPs per step as metrics.json reports them (routing-aware, on the rows really
    drawn), measured on `n_batches` training steps' batches through the model as it is, no
    weight changed: what a run of this configuration will cost per step."""
    iterators = {task: iter(dl) for task, dl in datamodule.train_dataloader().iterables.items()}
    routed = dense = 0.0
    with torch.no_grad():
        for _ in range(n_batches):
            for it in iterators.values():  # one forward per task batch, as a training step runs
                batch = module.model.training_batch(next(it))
                with record_routing(module.model) as trace:
                    module.model.task_losses(batch)
                r, d = module.step_flops(trace, batch)
                routed, dense = routed + r, dense + d
    return {
        "train/flops_per_step": routed / n_batches,
        "train/flops_per_step_dense": dense / n_batches,
        "train/flops_ratio": routed / dense,
    }


def load_unified_module(ckpt_path: str):
    """A UnifiedModule from a modlab checkpoint, with one-line errors for every way it can fail."""
    return load_module(UnifiedModule, read_unified_checkpoint(ckpt_path), ckpt_path)
