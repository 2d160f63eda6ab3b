"""Router-Tuning (MindSkip) as one part that a LightningModule holds, the same for the causal LMs
(modlab.training.lm) and the Hugging Face unified models (modlab.training.hf_unified_module):

- the base is frozen and its training-time regularisation (LayerDrop on attention, dropout) is
  switched off, so the routers train on the deterministic model they will gate;
- a MindSkip gate wraps the attention of every layer, a zero-initialised router gating the
  routed ones (`mindskip.layers`, never one the KV cache needs: `model.always_runs`);
- the loss gains `lam * relu(mean gate - target capacity)` (`mindskip.penalty=abs`:
  `lam * |mean gate - target|`);
- checkpoints hold the routers alone (`skip.routers.<i>.proj.weight`: the host keeps the MindSkip
  module as its attribute `skip`), loaded non-strictly over the rebuilt base, after a check that
  they are exactly the routers of this model's routed layers;
- the test capacity is the mean gate of each forward, weighted by what it averages over (rows,
  or valid tokens with token granularity).

The host registers the gate (`attach`) and owns its metrics (Lightning logs the metrics of its own
modules); everything Router-Tuning decides is here.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.errors import CheckpointError
from modlab.mindskip.config import MindSkipConfig
from modlab.mindskip.gate import MindSkip

ROUTER_PREFIX = "skip.routers."  # the state-dict keys of the routers, in the module that holds them


def deterministic(model_cfg):
    """A model config (modlab.models.config.ModelConfig) without the training-time regularisation
    Router-Tuning switches off (recorded so, in the checkpoint's hyper-parameters)."""
    return replace(model_cfg, attn_layer_drop=0.0, dropout=0.0)


class RouterTuning:
    """Router-Tuning of `model` (a CausalLM, HFCausalLM or HFUnifiedModel: `n_layer`, `d_model`,
    `attention_slots()`), configured by `cfg` (`cfg.enabled` is the caller's test)."""

    def __init__(self, cfg: MindSkipConfig, model: nn.Module):
        self.cfg = cfg
        model.requires_grad_(False)  # only the routers train
        layers = cfg.routed_layers(model.n_layer, getattr(model, "always_runs", frozenset()))
        # MindSkip switches the base's regularisation off when it routes a layer
        self.skip = MindSkip(model, layers, cfg.granularity, cfg.threshold, cfg.init_logit)

    def attach(self, host: nn.Module) -> None:
        """Register the gate as `host.skip` (its checkpoint keys) and let `host` load router-only
        checkpoints over its rebuilt base."""
        host.skip = self.skip
        host.strict_loading = False

    # ---- the objective ------------------------------------------------------------------------------

    def penalty(self, capacity: torch.Tensor) -> torch.Tensor:
        """lam * relu(capacity - target) (`penalty=abs`: lam * |capacity - target|), added to the loss."""
        gap = capacity - self.cfg.target_capacity
        return self.cfg.lam * (F.relu(gap) if self.cfg.penalty == "relu" else gap.abs())

    # ---- the test ------------------------------------------------------------------------------------

    def capacity_sample(self, valid: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(the last forward's mean gate, its weight in a mean over batches) for a batch with these
        `valid` tokens: the update of a MeanMetric of the test capacity."""
        return self.skip.capacity(), self.skip.capacity_weight(valid)

    def skipped_attention(self, capacity: torch.Tensor) -> torch.Tensor:
        """Attention executions skipped per sequence (per token-position on average with token
        granularity) at mean gate `capacity`: what the static LLM-Drop baseline is compared at."""
        return (1 - capacity) * len(self.skip.layers)

    # ---- checkpoints: the routers alone --------------------------------------------------------------

    def save(self, checkpoint: dict) -> None:
        """Keep the routers alone in a checkpoint's state dict (the base is rebuilt on load)."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(ROUTER_PREFIX)}

    def check(self, checkpoint: dict, state_keys) -> None:
        """A CheckpointError unless the checkpoint holds exactly the routers among `state_keys`
        (the host's own state-dict keys)."""
        if set(checkpoint["state_dict"]) != {k for k in state_keys if k.startswith(ROUTER_PREFIX)}:
            raise CheckpointError("the checkpoint's MindSkip routers do not match the routed layers of this model")
