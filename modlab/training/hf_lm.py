"""LightningModule for Hugging Face causal LMs: everything LMModule does (fine-tuning, Router-Tuning
with MindSkip) plus Mixture-of-Depths token routing inside the transformers decoder layers
(modlab.routing.hf_routed_layer).

With `routing=mod` each routed decoder layer runs only its top-k tokens (capacity C, annealed by
`routing.schedule`); the causal decision (`routing.causal`: aux_bce or predictor) is trained beside
the LM loss as the unified objective trains it:

    loss = LM loss + aux_weight * BCE(router logits, top-k choice)      (aux_bce: it shares the router)
    loss = LM loss + BCE(predictor logits, top-k choice)                (predictor: stop-gradient, full weight)

`objective.trainable=routers` freezes the model and trains the routers (and predictors) alone, as
Router-Tuning does: its checkpoints then hold the routers alone and rebuild the model from
`model.path`. Training logs the routed / dense training FLOPs of every step (modlab.routing.hf_flops).

Test metrics of a routed model (held-out text):
  test/ppl          perplexity with the causal routing decoding uses (threshold: a token runs a
                    routed layer iff its decision logit is > 0), not top-k (which sees the future)
  test/ppl_topk     with top-k at capacity C (what training optimised; not causal)
  test/ppl_dense    the same weights with every token running every layer (routing removed)
  test/capacity     fraction of valid tokens that ran the routed layers under the causal decision
  test/flops_ratio  forward FLOPs under the causal decision / dense forward FLOPs
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict

import torch
from torchmetrics import MeanMetric

from modlab.errors import CheckpointError, ConfigError
from modlab.evaluation.perplexity import TokenPerplexity
from modlab.hf_layer_map import decoder_layers
from modlab.mindskip.gate import freeze_regularisation
from modlab.models.token_nll import token_nll
from modlab.routing.config import RoutingConfig
from modlab.routing.hf_decode import greedy_decode
from modlab.routing.hf_flops import forward_flops, train_step_flops
from modlab.routing.hf_routed_layer import HFRouting, apply_hf_routing, unrouted
from modlab.routing.install import set_anneal_fraction, threshold_routing
from modlab.routing.schedule import anneal_fraction
from modlab.routing.trace import record_routing
from modlab.training.checkpoint import load_module, read_lm_checkpoint
from modlab.training.lm import LMModule


def router_keys(module) -> set[str]:
    """The state-dict keys of the routers and causal predictors of `module`'s routed layers (the
    parameters a routed layer adds; whatever the wrapped model names its own modules)."""
    if module.routing is None:
        return set()
    ours = {
        id(p)
        for layer in module.routing.layers.values()
        for part in (layer.router, layer.predictor)
        if part is not None
        for p in part.parameters()
    }
    return {name for name, p in module.named_parameters() if id(p) in ours}


class HFLMModule(LMModule):
    def __init__(
        self,
        model: dict,
        data: dict,
        objective: dict,
        eval: dict,
        mindskip: dict | None = None,
        base: str | None = None,
        seed: int = 0,
        routing: dict | None = None,
    ):
        super().__init__(model, data, objective, eval, mindskip, base, seed)
        # transformers loads in eval mode and Lightning keeps each submodule's mode: a fresh module
        # trains (dropout, and the routers' capacity schedule, which applies in training mode only)
        self.lm.train()
        self.routing_cfg = RoutingConfig(**(routing or {}))
        self.routing: HFRouting | None = None
        if self.routing_cfg.kind != "dense":
            if self.routing_cfg.kind != "mod":
                raise ConfigError(f"routing={self.routing_cfg.kind} does not apply to a causal LM (routing=mod)")
            if self.routing_cfg.causal == "none":
                raise ConfigError(
                    "routing.causal=none has no causal decision, and an LM is evaluated (and decodes) token by token: "
                    "use routing.causal=aux_bce or predictor"
                )
            n_layer = len(decoder_layers(self.lm.hf))
            self.routing_cfg = self.routing_cfg.resolved(n_layer)
            self.hparams["routing"] = asdict(self.routing_cfg)  # a plan file's content, not its path
            self.routing = apply_hf_routing(self.lm.hf, self.routing_cfg)
        trainable = self.objective_cfg.trainable
        self.routers_only = self.skip is None and self.routing is not None and trainable == "routers"
        if self.routers_only:
            self.lm.requires_grad_(False)
            # the routers train on the frozen model as it runs at inference: its dropout off
            # (Phi ships resid_pdrop=0.1), as MindSkip's Router-Tuning does
            freeze_regularisation(self.lm.hf)
            for layer in self.routing.layers.values():
                layer.router.requires_grad_(True)
                if layer.predictor is not None:
                    layer.predictor.requires_grad_(True)
            self.strict_loading = False  # its checkpoints hold the routers only
        self.flops_routed, self.flops_dense = MeanMetric(), MeanMetric()
        self.test_ppl_topk, self.test_ppl_dense = TokenPerplexity(), TokenPerplexity()
        self.test_flops_ratio = MeanMetric()
        self.last_trace = None  # the routing trace of the last losses() forward

    @classmethod
    def from_run(cls, run, model_cfg):
        return cls(
            asdict(model_cfg),
            asdict(run.data),
            asdict(run.objective),
            asdict(run.eval),
            asdict(run.mindskip),
            None,
            run.seed,
            asdict(run.routing),
        )

    # ---- checkpoints -----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.routers_only:
            keys = router_keys(self)
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.routers_only:
            if set(checkpoint["state_dict"]) != router_keys(self):
                raise CheckpointError("the checkpoint's routers do not match the routed layers of this model")

    # ---- training ----------------------------------------------------------------------------------

    def forward_logits(self, batch: dict, routers: bool = True) -> torch.Tensor:
        if self.routing is None:
            return super().forward_logits(batch, routers)
        with self.routing.inputs(valid=batch.get("valid")):
            return self.lm(batch["ids"], valid=batch.get("valid"))

    def forward_hidden(self, batch: dict, routers: bool = True) -> torch.Tensor:
        if self.routing is None:
            return super().forward_hidden(batch, routers)
        with self.routing.inputs(valid=batch.get("valid")):
            return self.lm.hidden_states(batch["ids"], valid=batch.get("valid"))

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """LMModule's losses; for a token-routed model also the causal decision's loss (and its
        agreement with top-k) from the routing trace of the forward, kept in `self.last_trace`."""
        if self.routing is None:
            return super().losses(batch)
        with record_routing(self.lm) as trace:
            out = super().losses(batch)
        self.last_trace = trace
        aux, agreement = trace.causal_stats()
        if aux is not None:
            r = self.routing_cfg
            out["router_aux"] = aux
            if agreement is not None:
                out["router_agreement"] = agreement
            out["loss"] = out["loss"] + (r.aux_weight if r.causal == "aux_bce" else 1.0) * aux
        out.update(trace.router_state().metrics())  # the routers' logit scale and weight gradient
        return out

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.routing is not None:
            s = self.routing_cfg.schedule
            set_anneal_fraction(self.lm, anneal_fraction(s.kind, self.global_step, s.anneal_steps))

    def training_step(self, batch: dict, batch_idx: int):
        if self.routing is None:
            return super().training_step(batch, batch_idx)
        out = self.losses(batch)
        B, T = batch["ids"].shape
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=B)
        self.log("train/lm_loss", out["lm_loss"], batch_size=B)
        for k in out:
            if k.startswith("router_"):
                self.log(f"train/{k}", out[k], batch_size=B)
        routed = float(train_step_flops(self.lm.hf, B, T, self.last_trace.flops_groups()[0]))
        dense = float(train_step_flops(self.lm.hf, B, T))
        self.flops_routed.update(routed)
        self.flops_dense.update(dense)
        self.log("train/flops_ratio", routed / dense, batch_size=B)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int):
        super().validation_step(batch, batch_idx)
        if self.routing is not None:
            _, agreement = self.last_trace.causal_stats()
            stats = self.last_trace.router_state().metrics()
            if agreement is not None:
                stats["router_agreement"] = agreement
            for k, v in stats.items():
                self.log(f"val/{k}", v, batch_size=batch["ids"].shape[0], sync_dist=True)

    def flops_summary(self) -> dict[str, float]:
        """Mean training FLOPs per step over the run (for metrics.json)."""
        if self.routing is None or self.flops_dense.update_count == 0:
            return {}
        routed, dense = float(self.flops_routed.compute()), float(self.flops_dense.compute())
        return {
            "train/flops_per_step": routed,
            "train/flops_per_step_dense": dense,
            "train/flops_ratio": routed / dense,
        }

    # ---- test ----------------------------------------------------------------------------------------

    def test_step(self, batch: dict, batch_idx: int):
        if self.routing is None:
            return super().test_step(batch, batch_idx)
        B, T = batch["ids"].shape
        valid = batch.get("valid")
        n_valid = float(valid.sum()) if valid is not None else float(B * T)
        with threshold_routing(self.lm), record_routing(self.lm) as trace:
            nll = self.nll(batch)
        kept = sum(float(r.selected.sum()) for r in trace.records)
        self.test_ppl.update(*nll)
        self.log("test/ppl", self.test_ppl)
        self.test_capacity.update(kept / (n_valid * len(self.routing.layers)), weight=n_valid)
        self.log("test/capacity", self.test_capacity)
        groups = trace.flops_groups()[0]
        dense_flops = forward_flops(self.lm.hf, B, T)  # weighted by it: the test's routed FLOPs / its dense FLOPs
        self.test_flops_ratio.update(forward_flops(self.lm.hf, B, T, groups) / dense_flops, weight=dense_flops)
        self.log("test/flops_ratio", self.test_flops_ratio)
        self.test_ppl_topk.update(*self.nll(batch))
        self.log("test/ppl_topk", self.test_ppl_topk)
        with unrouted(self.routing):
            h = self.lm.hidden_states(batch["ids"], valid=valid)
        self.test_ppl_dense.update(*token_nll(self.lm.logits_of, h, batch["labels"], self.lm.vocab_size))
        self.log("test/ppl_dense", self.test_ppl_dense)


def load_hf_lm_module(ckpt_path: str) -> HFLMModule:
    """An HFLMModule from one of its checkpoints (a routers-only one rebuilds the model from model.path)."""
    return load_module(HFLMModule, read_lm_checkpoint(ckpt_path), ckpt_path)


@torch.no_grad()
def decode_speed(module: HFLMModule, prompts: list[torch.Tensor], n_new: int, repeats: int) -> dict:
    """Batch-1 greedy decoding with the KV cache: the routed model under its causal decision (the
    compact cache: a token that skips a routed layer writes no K/V there) against the same weights
    unrouted. Median seconds over `repeats` rounds of all prompts; K/V entries summed over layers."""
    hf, routing = module.lm.hf, module.routing
    blocked = sorted(i for i, layer in routing.layers.items() if layer.sizes_decode_masks)
    if blocked:
        return {"speed/skipped": f"routed layers {blocked} size transformers' decode masks (route later layers)"}
    device = next(hf.parameters()).device

    def run(routed: bool):
        entries, start = 0, time.perf_counter()
        for p in prompts:
            if routed:
                with threshold_routing(hf):
                    _, _, cache = greedy_decode(hf, p.to(device), n_new)
            else:
                with unrouted(routing):
                    _, _, cache = greedy_decode(hf, p.to(device), n_new)
            entries += sum(layer.get_seq_length() for layer in cache.layers)
        return time.perf_counter() - start, entries

    times = {"dense": [], "routed": []}
    entries = {}
    for _ in range(repeats):
        for name in times:  # in alternation, so a change of machine load hits both
            seconds, entries[name] = run(name == "routed")
            times[name].append(seconds)
    tokens = len(prompts) * n_new
    dense, routed = statistics.median(times["dense"]), statistics.median(times["routed"])
    return {
        "speed/threads": torch.get_num_threads(),
        "speed/dense_generate_tok_s": tokens / dense,
        "speed/routed_generate_tok_s": tokens / routed,
        "speed/routed_generate_speedup": dense / routed,
        "speed/dense_kv_entries": entries["dense"],
        "speed/routed_kv_entries": entries["routed"],
        "speed/kv_saving": 1 - entries["routed"] / entries["dense"],
    }
