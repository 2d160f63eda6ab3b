"""Capacity schedules: start dense and anneal each router's capacity down to its target.

Annealing lets a dense checkpoint (or a fresh model) hand tokens to the routers gradually instead
of losing 80 % of a layer's tokens on step one:

    c(step) = 1 - (1 - c_target) * f(min(1, step / anneal_steps))
    f(p) = p (linear) or (1 - cos(pi p)) / 2 (cosine); constant: c = c_target throughout.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def anneal_fraction(kind: str, step: int, anneal_steps: int) -> float:
    """How far along the anneal we are, in [0, 1] (1: at the target capacity)."""
    if kind == "constant" or anneal_steps <= 0:
        return 1.0
    p = min(1.0, max(0.0, step / anneal_steps))
    return p if kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * p))


def annealed_capacity(target: float, fraction: float) -> float:
    return 1.0 - (1.0 - target) * fraction
