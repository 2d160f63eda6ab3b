"""From ARank to a routing plan (the file `routing.plan=<file>` trains with).

Per routed task: the routed layers are the more redundant `fraction` of the layers (lowest ARank
normalised by sequence length; with importance, the lowest rank sum of normalised ARank and
LLM-Drop block importance), ties going to the deeper layer. Each routed layer's capacity is its
normalised ARank rank(Q K^T) / n, clipped to [min_capacity, max_capacity]: a layer whose attention
spans r independent directions over n tokens keeps about r of its n tokens.
"""

from __future__ import annotations

import math

from modlab.analysis.config import PlanConfig
from modlab.errors import ConfigError
from modlab.routing.plan_file import RoutingPlan, TaskPlan


def _ranks(values: list[float]) -> list[int]:
    """Position of each value in ascending order (0 = smallest); ties by depth, deeper first."""
    order = sorted(range(len(values)), key=lambda i: (values[i], -i))
    pos = [0] * len(values)
    for r, i in enumerate(order):
        pos[i] = r
    return pos


def plan_from_arank(
    arank_norm: dict[str, list[float]],
    cfg: PlanConfig,
    importance: dict[str, list[float]] | None = None,
    source: dict | None = None,
) -> RoutingPlan:
    """arank_norm: {task: normalised ARank per layer}; importance: {task: block importance per layer}."""
    missing = [t for t in cfg.tasks if t not in arank_norm]
    if missing:
        raise ConfigError(f"analysis.plan.tasks {missing} have no calibration rows (add them to calibration.tasks)")
    tasks = {}
    for task in cfg.tasks:
        values = arank_norm[task]
        n_layer = len(values)
        score = _ranks(values)
        if importance is not None:
            score = [a + b for a, b in zip(score, _ranks(importance[task]))]
        n_routed = max(1, math.floor(cfg.fraction * n_layer + 1e-9))
        layers = sorted(sorted(range(n_layer), key=lambda i: (score[i], values[i], -i))[:n_routed])
        caps = [round(min(cfg.max_capacity, max(cfg.min_capacity, values[i])), 3) for i in layers]
        tasks[task] = TaskPlan(layers, caps)
    return RoutingPlan(n_layer=len(next(iter(arank_norm.values()))), tasks=tasks, source=source or {})
