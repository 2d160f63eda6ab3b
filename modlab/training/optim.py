"""AdamW with linear warm-up and cosine decay (decay on matrices only), over trainable parameters."""

from __future__ import annotations

import math

import torch

from modlab.training.config import ObjectiveConfig


def adamw_warmup_cosine(params, t: ObjectiveConfig, total_steps: int) -> dict:
    """Lightning's configure_optimizers dict. Frozen parameters (requires_grad=False) are left
    out, so the optimizer holds exactly what is trained."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        betas=tuple(t.betas),
    )
    total = max(1, total_steps)

    def schedule(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
