"""MindSkip configuration (plain dataclass; the `mindskip` config group's schema)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modlab.errors import ConfigError

GRANULARITIES = ("sequence", "token")
PENALTIES = ("relu", "abs")
DROP_CANDIDATES = ("all", "routed")


@dataclass
class MindSkipConfig:
    enabled: bool = False  # add a router per routed attention layer and train only the routers
    layers: list[int] = field(default_factory=list)  # routed layers; empty: the deepest n_routed (see exclude_last)
    n_routed: int = 4
    # the deepest n_routed layers stop below the last one (the released recipe, on Llama: its last
    # layer feeds the head); false: they include it (on Gemma 3 270M the last attention is the
    # cheapest to skip, the first one the static LLM-Drop baseline takes)
    exclude_last: bool = True
    granularity: str = "sequence"  # sequence: one gate per row (masked mean of valid tokens) | token
    threshold: float = 0.5  # tau: the gate is open where sigmoid(router) >= tau
    # the logit every gate starts at (the router is zero-initialised, plus this fixed offset): 0 is
    # the released recipe (sigmoid = 0.5 = tau: on the threshold); > 0 starts the gates open with a margin
    init_logit: float = 0.0
    target_capacity: float = 0.5  # mean gate over the routed layers the penalty steers toward
    lam: float = 0.0  # weight of the capacity penalty; 0: the released recipe (LM loss only)
    # relu: lam * relu(mean gate - target) (only too many open gates cost);
    # abs: lam * |mean gate - target| (also holds the capacity up at the target)
    penalty: str = "relu"
    drop_candidates: str = "all"  # static LLM-Drop baseline: drop among all layers or the routed ones
    calibration_rows: int = 64  # training rows that score the layers for the static baseline

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"mindskip.granularity '{self.granularity}' is unknown ({', '.join(GRANULARITIES)})")
        # the routers start at sigmoid(init_logit) (0.5 for the released zero init): a higher
        # threshold would close every gate from the first step (the routed model would start as the
        # base without those attentions)
        start = 1.0 / (1.0 + math.exp(-self.init_logit))
        if not 0.0 < self.threshold <= start or self.threshold >= 1.0:
            raise ConfigError(
                f"mindskip.threshold must be in (0, {start:.3g}], got {self.threshold}: the routers start at "
                f"sigmoid(init_logit={self.init_logit:g}) = {start:.3g}, so a higher threshold starts every gate closed"
            )
        if not 0.0 < self.target_capacity <= 1.0:
            raise ConfigError(f"mindskip.target_capacity must be in (0, 1], got {self.target_capacity}")
        if self.penalty not in PENALTIES:
            raise ConfigError(f"mindskip.penalty '{self.penalty}' is unknown ({', '.join(PENALTIES)})")
        if self.lam < 0:
            raise ConfigError(f"mindskip.lam must be >= 0, got {self.lam}")
        if self.n_routed < 1 or self.calibration_rows < 1:
            raise ConfigError("mindskip.n_routed and mindskip.calibration_rows must be >= 1")
        if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
            raise ConfigError(f"mindskip.layers must be distinct layer indices >= 0, got {self.layers}")
        if self.drop_candidates not in DROP_CANDIDATES:
            raise ConfigError(
                f"mindskip.drop_candidates '{self.drop_candidates}' is unknown ({', '.join(DROP_CANDIDATES)})"
            )

    def routed_layers(self, n_layer: int, always_runs=frozenset()) -> list[int]:
        """The explicit list, or the deepest n_routed layers, excluding the last one unless
        exclude_last is false (deep attention is the most redundant)."""
        if self.layers:
            bad = [i for i in self.layers if i >= n_layer]
            if bad:
                raise ConfigError(f"mindskip.layers {bad} out of range: the model has layers 0..{n_layer - 1}")
            layers = sorted(self.layers)
        else:
            top = n_layer - 1 if self.exclude_last else n_layer
            if self.n_routed > top:
                below = " below the last" if self.exclude_last else ""
                raise ConfigError(f"mindskip.n_routed={self.n_routed} but the model has only {top} layers{below}")
            layers = list(range(top - self.n_routed, top))
        fixed = sorted(set(layers) & set(always_runs))
        if fixed:
            raise ConfigError(f"mindskip.layers {fixed} cannot be routed in this model (its KV cache needs that layer)")
        return layers
