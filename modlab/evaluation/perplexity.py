"""Perplexity accumulated from summed token NLLs (modlab.models.token_nll), never from logits:
exp(total NLL / total tokens), i.e. weighted by tokens across batches of any size, and summed
across processes under DDP."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TokenPerplexity(Metric):
    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, count: int) -> None:
        self.nll += nll_sum.detach().to(self.nll.device, torch.float64)
        self.count += int(count)

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll / self.count.clamp(min=1)).float()
