"""Defect 5 (issue 12): the LM perplexity of a routed model must be autoregressive.

Top-k over an LM row lets later bytes decide which earlier bytes run a routed layer; the test
perplexity must route by the causal decision (threshold), as MMU answers and Emu3-like T2I
already do, and validation says which routing each loss used."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from modlab.data.config import DataConfig
from modlab.data.rows import collate_rows
from modlab.models.config import ModelConfig
from modlab.routing.config import RoutingConfig
from modlab.routing.install import routed_blocks, threshold_routing
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.digits_datamodule import DigitsDataModule
from modlab.training.unified import UnifiedModule


def ppl(model, rows: dict) -> float:
    with torch.no_grad():
        logits = model(rows["ids"], rows["is_image"], rows["valid"], rows["task"])
    return math.exp(float(F.cross_entropy(logits.flatten(0, 1), rows["labels"].flatten(), ignore_index=-100)))


def test_lm_perplexity_of_a_mod_model_uses_causal_routing():
    L.seed_everything(0, verbose=False)
    data = DataConfig(batch_size={"t2i": 4, "mmu": 4, "lm": 4}, eval_batch_size=8)
    ev = EvalConfig(
        t2i_per_digit=1, maskgit_steps=1, max_answer_tokens=2, mmu_max_rows=4, lm_max_rows=8, ref_classifier_epochs=1
    )
    routing = RoutingConfig(kind="mod", capacity=0.25, causal="aux_bce")
    module = UnifiedModule.from_configs(
        ModelConfig(d_model=32, n_layer=4, n_head=2), data, ObjectiveConfig(), ev, routing
    )
    for b in routed_blocks(module.model):  # logits spread around 0: top-k and threshold differ
        torch.nn.init.normal_(b.router.proj.weight, std=1.0)
    dm = DigitsDataModule(data, ev)
    module.image_tokenizer = dm.image_tokenizer
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=1,
    )
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]
    # validation names its routing: top-k losses as trained, the LM loss under causal routing
    assert {"val/loss", "val/loss_lm", "val/loss_lm_causal"} <= set(val)
    assert float(val["val/loss_lm_causal"]) != float(val["val/loss_lm"])
    metrics = {k: float(v) for r in trainer.test(module, datamodule=dm, verbose=False) for k, v in r.items()}
    lm = collate_rows([dm.test_dataloader()[2].dataset[i] for i in range(8)], module.space.pad)
    module.model.eval()
    with threshold_routing(module.model):
        causal = ppl(module.model, lm)
    topk = ppl(module.model, lm)
    assert abs(causal - topk) / topk > 1e-3  # the two routings really give different numbers
    assert math.isclose(metrics["test/lm_ppl"], causal, rel_tol=1e-4), (metrics["test/lm_ppl"], causal, topk)
    assert metrics["test/lm_ppl_causal"] == 1.0


def test_lm_perplexity_flag_says_top_k_when_no_causal_decision_exists():
    """routing.causal=none has no causal decision: the perplexity falls back to top-k and says so."""
    routing = RoutingConfig(kind="mod", capacity=0.5, causal="none")
    data = DataConfig(batch_size={"lm": 2})
    ev = EvalConfig(
        t2i_per_digit=1, maskgit_steps=1, max_answer_tokens=2, mmu_max_rows=2, lm_max_rows=2, ref_classifier_epochs=1
    )
    module = UnifiedModule.from_configs(
        ModelConfig(d_model=32, n_layer=2, n_head=2), data, ObjectiveConfig(), ev, routing
    )
    dm = DigitsDataModule(data, ev)
    module.image_tokenizer = dm.image_tokenizer
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    metrics = {k: float(v) for r in trainer.test(module, datamodule=dm, verbose=False) for k, v in r.items()}
    assert metrics["test/lm_ppl_causal"] == 0.0
