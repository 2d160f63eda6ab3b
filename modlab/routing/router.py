"""Routers: a linear scorer per routed layer; one column per task for UniMoD."""

from __future__ import annotations

import torch
import torch.nn as nn


class TaskRouter(nn.Module):
    """Token scores s = w_task . x. With n_routers = 1 this is MoD's single router (all tasks
    share it and compete for one budget); with one router per task (UniMoD) each row is scored
    by the router of its task, so T2I tokens only ever compete with T2I tokens of their row.
    Knows nothing of tasks beyond the integer task id."""

    def __init__(self, d_model: int, n_routers: int = 1):
        super().__init__()
        self.n_routers = n_routers
        self.proj = nn.Linear(d_model, n_routers, bias=False)
        nn.init.normal_(self.proj.weight, std=d_model**-0.5)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        scores = self.proj(x)  # (B, T, n_routers)
        if self.n_routers == 1:
            return scores[..., 0]
        col = task.clamp(max=self.n_routers - 1)[:, None, None].expand(-1, x.shape[1], 1)
        return scores.gather(-1, col)[..., 0]
