"""Fréchet distance between two sets of features (the FID formula), and a torchmetrics Metric
that accumulates generated features against fixed reference features.

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

tr((S_1 S_2)^(1/2)) is the sum of the square roots of the eigenvalues of S_1 S_2 (real and
non-negative for two covariance matrices; clamped against round-off), in float64.

"digits-FID" (modlab.evaluation.scene_metrics) uses the reference digit classifier's penultimate
features, so a generator that draws one prototype per digit is far from the real spread of
handwriting even when every cell is classified right. Like FID it is biased upwards for small
samples: compare values computed on the same numbers of cells.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    eig = torch.linalg.eigvals(cov1 @ cov2).real.clamp(min=0)
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * eig.sqrt().sum())


def feature_frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between two (N, D) feature sets."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


class FrechetDistance(Metric):
    """Fréchet distance of the features passed to `update` (gathered over processes) from fixed
    reference features given at construction."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, reference: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        mu, cov = gaussian_stats(reference)
        self.register_buffer("ref_mu", mu, persistent=False)
        self.register_buffer("ref_cov", cov, persistent=False)
        self.add_state("features", default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor) -> None:
        self.features.append(features.detach().double())

    def compute(self) -> torch.Tensor:
        x = dim_zero_cat(self.features) if self.features else torch.zeros(0, len(self.ref_mu))
        if len(x) < 2:  # no spread to compare
            return torch.tensor(float("nan"))
        return torch.tensor(frechet_distance(*gaussian_stats(x), self.ref_mu, self.ref_cov))
