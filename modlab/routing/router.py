"""Routers: a linear scorer per routed layer; one column per task for UniMoD."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TaskRouter(nn.Module):
    """Token scores s = w_task . x. With n_routers = 1 this is MoD's single router (all tasks
    share it and compete for one budget); with one router per task (UniMoD) each row is scored
    by the router of its task, so T2I tokens only ever compete with T2I tokens of their row.
    Knows nothing of tasks beyond the integer task id."""

    def __init__(self, d_model: int, n_routers: int = 1, normalise: bool = False):
        super().__init__()
        self.n_routers, self.normalise = n_routers, normalise
        self.proj = nn.Linear(d_model, n_routers, bias=False)
        nn.init.normal_(self.proj.weight, std=d_model**-0.5)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if self.normalise:  # routing.router_input=norm: the scale of the residual stream does not reach the logits
            x = F.layer_norm(x, x.shape[-1:])
        return pick_task_column(self.proj(x), task)


class RoutingPredictor(nn.Module):
    """MoD's second option for causal decoding: a small MLP that predicts, from the layer input,
    whether top-k will select a token. It is fed the stop-gradient input (modlab.routing.
    routed_block detaches it) so learning to predict never changes the model or the router."""

    def __init__(self, d_model: int, n_routers: int = 1, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, n_routers, bias=False)
        )

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return pick_task_column(self.net(x), task)


def pick_task_column(scores: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """(B, T, n_routers) -> (B, T): each row scored by the column of its task (one column: MoD)."""
    if scores.shape[-1] == 1:
        return scores[..., 0]
    col = task.clamp(max=scores.shape[-1] - 1)[:, None, None].expand(-1, scores.shape[1], 1)
    return scores.gather(-1, col)[..., 0]
