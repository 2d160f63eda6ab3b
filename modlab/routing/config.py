"""Routing configuration (plain dataclass; the `routing` config group's schema)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modlab.data.tokens import TASKS
from modlab.errors import ConfigError
from modlab.routing.routed_block import ROUTER_WEIGHTS

KINDS = ("dense", "mod", "unimod")
PLACEMENTS = ("interleaved", "last_half", "all")


@dataclass
class RoutingConfig:
    kind: str = "dense"  # dense | mod (one router, all tokens compete) | unimod (one router per task)
    layers: list[int] = field(default_factory=list)  # routed layers; empty: chosen by `placement`
    placement: str = "interleaved"  # interleaved (1, 3, 5, ...) | last_half | all
    capacity: float = 0.125  # mod: the capacity of every routed layer
    # unimod: per task, one capacity per routed layer (or a single value for all of them);
    # a task that is not listed runs dense (capacity 1.0) in every layer
    task_capacity: dict[str, list[float]] = field(default_factory=dict)
    weight: str = "ste_sigmoid"  # ste_sigmoid | sigmoid (see modlab.routing.routed_block)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"routing.kind '{self.kind}' is unknown ({', '.join(KINDS)})")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"routing.placement '{self.placement}' is unknown ({', '.join(PLACEMENTS)})")
        if self.weight not in ROUTER_WEIGHTS:
            raise ConfigError(f"routing.weight '{self.weight}' is unknown ({', '.join(ROUTER_WEIGHTS)})")
        if not 0.0 < self.capacity <= 1.0:
            raise ConfigError(f"routing.capacity must be in (0, 1], got {self.capacity}")
        if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
            raise ConfigError(f"routing.layers must be distinct layer indices >= 0, got {self.layers}")
        unknown = set(self.task_capacity) - set(TASKS)
        if unknown:
            raise ConfigError(f"routing.task_capacity has unknown task(s) {sorted(unknown)} (known: {', '.join(TASKS)})")
        for task, caps in self.task_capacity.items():
            if not caps or not all(0.0 < c <= 1.0 for c in caps):
                raise ConfigError(f"routing.task_capacity.{task} must be capacities in (0, 1], got {list(caps)}")
        if self.kind == "unimod" and not self.task_capacity:
            raise ConfigError("routing.kind=unimod needs routing.task_capacity (per task capacities)")

    def routed_layers(self, n_layer: int) -> list[int]:
        if self.kind == "dense":
            return []
        if self.layers:
            bad = [i for i in self.layers if i >= n_layer]
            if bad:
                raise ConfigError(f"routing.layers {bad} out of range: the model has layers 0..{n_layer - 1}")
            return sorted(self.layers)
        if self.placement == "interleaved":
            return list(range(1, n_layer, 2))
        if self.placement == "last_half":
            return list(range(n_layer // 2, n_layer))
        return list(range(n_layer))

    def layer_capacities(self, n_layer: int) -> dict[int, list[float]]:
        """{layer: one capacity per router}: MoD has one router, UniMoD one per task id."""
        layers = self.routed_layers(n_layer)
        if self.kind == "mod":
            return {i: [self.capacity] for i in layers}
        per_task = {}
        for task in TASKS:
            caps = list(self.task_capacity.get(task, [1.0]))
            if len(caps) == 1:
                caps = caps * len(layers)
            if len(caps) != len(layers):
                raise ConfigError(f"routing.task_capacity.{task} has {len(caps)} values for {len(layers)} routed layers")
            per_task[task] = caps
        return {layer: [per_task[t][j] for t in TASKS] for j, layer in enumerate(layers)}
