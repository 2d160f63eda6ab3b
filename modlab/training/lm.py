"""LightningModule for causal LMs: pretraining the tiny LM, and Router-Tuning (MindSkip).

Pretraining (`mindskip.enabled=false`): next-token loss on every weight.
Router-Tuning (`mindskip.enabled=true`): the base (a pretrained checkpoint `base`, or a Hugging
Face directory `model.path`) is frozen, its training-time LayerDrop on attention and dropout are
switched off (whatever the base was pretrained with: the routers must see the model they gate),
a zero-initialised router gates each routed attention sublayer, and only the routers train on

    loss = LM loss + lam * relu(mean gate - target capacity)

(lam = 0 is the released recipe; `mindskip.penalty=abs` uses |mean gate - target| instead, which
also stops the routers from closing more than asked). Its checkpoints hold the routers alone plus where the base
is, and every run also writes them as `routers.safetensors`.

Test metrics (held-out text): test/ppl (per token; bytes for the tiny LM), test/capacity (mean
gate over the routed layers), and for a routed model test/ppl_base (the base model, no routers).
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from torchmetrics import MeanMetric

from modlab.data.config import DataConfig
from modlab.evaluation.perplexity import TokenPerplexity
from modlab.mindskip.config import MindSkipConfig
from modlab.mindskip.gate import MindSkip
from modlab.mindskip.router_tuning import RouterTuning, deterministic
from modlab.models.config import ModelConfig
from modlab.models.token_nll import head_is_frozen, token_nll
from modlab.training.checkpoint import LM_KIND, build_lm, load_lm_weights, load_module, read_lm_checkpoint
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.optim import adamw_warmup_cosine


class LMModule(L.LightningModule):
    def __init__(
        self,
        model: dict,
        data: dict,
        objective: dict,
        eval: dict,
        mindskip: dict | None = None,
        base: str | None = None,
        seed: int = 0,
    ):
        """`base`: the pretrained LM checkpoint a native model is router-tuned from."""
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg, self.data_cfg = ModelConfig(**model), DataConfig(**data)
        self.objective_cfg, self.eval_cfg = ObjectiveConfig(**objective), EvalConfig(**eval)
        self.skip_cfg = MindSkipConfig(**(mindskip or {}))
        if self.skip_cfg.enabled:  # routers train on the deterministic base (MindSkip also enforces it)
            self.model_cfg = deterministic(self.model_cfg)
        self.lm, self.tokenizer = build_lm(self.model_cfg)
        if base is not None:
            load_lm_weights(self.lm, base, "the base checkpoint")
        self.skip: MindSkip | None = None
        self.router_tuning = RouterTuning(self.skip_cfg, self.lm) if self.skip_cfg.enabled else None
        if self.router_tuning is not None:
            self.router_tuning.attach(self)  # self.skip; router-tuning checkpoints hold the routers only
        self.test_ppl, self.test_ppl_base = TokenPerplexity(), TokenPerplexity()
        self.test_capacity, self.val_loss = MeanMetric(), MeanMetric()

    @classmethod
    def from_configs(
        cls,
        model: ModelConfig,
        data: DataConfig,
        objective: ObjectiveConfig,
        eval: EvalConfig,
        mindskip: MindSkipConfig,
        base: str | None = None,
        seed: int = 0,
    ):
        return cls(asdict(model), asdict(data), asdict(objective), asdict(eval), asdict(mindskip), base, seed)

    # ---- checkpoints: a router-tuned one holds the routers alone --------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["modlab_kind"] = LM_KIND
        if self.router_tuning is not None:
            self.router_tuning.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.router_tuning is not None:
            self.router_tuning.check(checkpoint, self.state_dict())

    def router_info(self) -> dict:
        """What `routers.safetensors` records besides the weights: enough to rebuild the base."""
        return {
            "model": asdict(self.model_cfg),
            "base": self.hparams.base,
            "mindskip": asdict(self.skip_cfg),
            "data": asdict(self.data_cfg),
            "d_model": self.lm.d_model,
            "n_layer": self.lm.n_layer,
        }

    # ---- training -------------------------------------------------------------------------------

    def forward_logits(self, batch: dict, routers: bool = True) -> torch.Tensor:
        valid = batch.get("valid")
        if self.skip is None:
            return self.lm(batch["ids"], valid=valid)
        with self.skip.variant(routers=routers), self.skip.context(valid=valid):
            return self.lm(batch["ids"], valid=valid)

    def forward_hidden(self, batch: dict, routers: bool = True) -> torch.Tensor:
        """forward_logits without the output head: the final hidden states (B, T, d)."""
        valid = batch.get("valid")
        if self.skip is None:
            return self.lm.hidden_states(batch["ids"], valid=valid)
        with self.skip.variant(routers=routers), self.skip.context(valid=valid):
            return self.lm.hidden_states(batch["ids"], valid=valid)

    def nll(self, batch: dict, routers: bool = True) -> tuple[torch.Tensor, int]:
        """(summed next-token NLL over the labelled tokens, their count), the head applied a chunk
        of tokens at a time (a 262k vocabulary never holds a batch's logits at once)."""
        return token_nll(
            self.lm.logits_of,
            self.forward_hidden(batch, routers),
            batch["labels"],
            self.lm.vocab_size,
            head_frozen=head_is_frozen(self.lm),
        )

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """LM loss, and for Router-Tuning the capacity and its penalty; `loss` is their sum."""
        nll, count = self.nll(batch)
        lm_loss = nll / max(count, 1)
        out = {"loss": lm_loss, "lm_loss": lm_loss}
        if self.router_tuning is not None:
            capacity = self.skip.capacity().to(lm_loss.device)
            out["capacity"] = capacity
            out["loss"] = lm_loss + self.router_tuning.penalty(capacity)
        return out

    def training_step(self, batch: dict, batch_idx: int):
        out = self.losses(batch)
        n = batch["ids"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        if self.skip is not None:
            self.log("train/lm_loss", out["lm_loss"], batch_size=n)
            self.log("train/capacity", out["capacity"], prog_bar=True, batch_size=n)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int):
        out = self.losses(batch)
        n = batch["ids"].shape[0]
        self.val_loss.update(out["loss"])
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=n)
        if self.skip is not None:
            self.log("val/lm_loss", out["lm_loss"], batch_size=n)
            self.log("val/capacity", out["capacity"], prog_bar=True, batch_size=n)
            for i, c in self.skip.layer_capacity().items():  # which layers the routers close
                self.log(f"val/capacity_layer{i}", c, batch_size=n)

    def configure_optimizers(self):
        steps = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return adamw_warmup_cosine(self.parameters(), self.objective_cfg, steps)

    # ---- test -----------------------------------------------------------------------------------

    def test_step(self, batch: dict, batch_idx: int):
        self.test_ppl.update(*self.nll(batch))
        self.log("test/ppl", self.test_ppl)
        if self.router_tuning is not None:
            valid = batch.get("valid", torch.ones_like(batch["ids"], dtype=torch.bool))
            capacity, weight = self.router_tuning.capacity_sample(valid)  # weighted by rows / tokens
            self.test_capacity.update(capacity, weight=weight)
            self.log("test/capacity", self.test_capacity)
            self.test_ppl_base.update(*self.nll(batch, routers=False))
            self.log("test/ppl_base", self.test_ppl_base)

    def on_test_epoch_end(self) -> None:
        if self.router_tuning is not None and self.test_capacity.update_called:
            skipped = self.router_tuning.skipped_attention(self.test_capacity.compute())
            self.log("test/skipped_attention_per_seq", skipped)


def load_lm_module(ckpt_path: str) -> LMModule:
    """An LMModule from an LM checkpoint (a router-tuned one rebuilds its base first)."""
    return load_module(LMModule, read_lm_checkpoint(ckpt_path), ckpt_path)
