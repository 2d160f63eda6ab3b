"""Routing configuration (plain dataclass; the `routing` config group's schema)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from modlab.data.tokens import TASKS
from modlab.errors import ConfigError
from modlab.routing.plan_file import load_plan
from modlab.routing.schedule import SCHEDULES

# the options of RoutedBlock (modlab.routing.routed_block), here so that validating a config needs no torch
# ste_*: exactly 1 in the forward pass, the gradient of sigmoid(s) / s backward; sigmoid, logit: the
# forward scales by it too (logit: MoD's own r * f(x))
ROUTER_WEIGHTS = ("ste_sigmoid", "sigmoid", "ste_logit", "logit")
CAUSAL_MODES = ("none", "aux_bce", "predictor")
ROUTER_INPUTS = ("raw", "norm")  # what the router reads: the residual stream as it is, or layer-normalised

KINDS = ("dense", "mod", "unimod")
PLACEMENTS = ("interleaved", "last_half", "last_n", "all")


@dataclass
class ScheduleConfig:
    """Capacity during training: constant, or annealed from 1.0 (dense) down to the target over
    the first `anneal_steps` optimiser steps (linear or cosine). Evaluation uses the target."""

    kind: str = "constant"  # constant | linear | cosine
    anneal_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"routing.schedule.kind '{self.kind}' is unknown ({', '.join(SCHEDULES)})")
        if self.anneal_steps < 0 or (self.kind != "constant" and self.anneal_steps == 0):
            raise ConfigError(
                f"routing.schedule.anneal_steps must be >= 1 for an annealed schedule, got {self.anneal_steps}"
            )


@dataclass
class RoutingConfig:
    kind: str = "dense"  # dense | mod (one router, all tokens compete) | unimod (one router per task)
    layers: list[int] = field(default_factory=list)  # routed layers; empty: chosen by `placement`
    placement: str = "interleaved"  # interleaved (1, 3, 5, ...) | last_half | last_n | all
    n_last: int = 0  # placement=last_n: the deepest n_last layers
    capacity: float = 0.125  # mod: the capacity of every routed layer ...
    layer_capacity: list[float] = field(default_factory=list)  # ... or one per routed layer
    # unimod: per task, one capacity per routed layer (or a single value for all of them);
    # a task that is not listed runs dense (capacity 1.0) in every layer
    task_capacity: dict[str, list[float]] = field(default_factory=dict)
    # unimod: per task, its own routed layers (UniMoD's layer switch); default: the routed layers
    task_layers: dict[str, list[int]] = field(default_factory=dict)
    # a routing plan file (`modlab analyze redundancy` writes one): unimod, per task; mod, the
    # layers and capacities of the plan's one task. It replaces task_layers / task_capacity
    # (unimod) or layers / layer_capacity (mod)
    plan: str | None = None
    weight: str = "ste_sigmoid"  # ste_sigmoid | sigmoid (see modlab.routing.routed_block)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # how decoding routes causally (top-k sees the future): aux_bce trains the router's logits to
    # predict top-k (MoD's auxiliary loss, weight aux_weight); predictor trains a small
    # stop-gradient MLP instead; none keeps top-k at decoding (not causal)
    causal: str = "aux_bce"
    aux_weight: float = 0.01
    # the router's gradient (docs/routing.md, "The router's gradient"): the sigmoid weights read
    # sigmoid(s / temperature); router_input=norm scores the layer-normalised stream (no affine);
    # aux_margin: the aux BCE leaves out tokens whose logit is already right by more than it
    # (null: every token, MoD's loss)
    temperature: float = 1.0
    router_input: str = "raw"
    aux_margin: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"routing.kind '{self.kind}' is unknown ({', '.join(KINDS)})")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"routing.placement '{self.placement}' is unknown ({', '.join(PLACEMENTS)})")
        if self.causal not in CAUSAL_MODES:
            raise ConfigError(f"routing.causal '{self.causal}' is unknown ({', '.join(CAUSAL_MODES)})")
        if self.aux_weight < 0:
            raise ConfigError(f"routing.aux_weight must be >= 0, got {self.aux_weight}")
        if self.weight not in ROUTER_WEIGHTS:
            raise ConfigError(f"routing.weight '{self.weight}' is unknown ({', '.join(ROUTER_WEIGHTS)})")
        if not self.temperature > 0:
            raise ConfigError(f"routing.temperature must be > 0, got {self.temperature}")
        if self.router_input not in ROUTER_INPUTS:
            raise ConfigError(f"routing.router_input '{self.router_input}' is unknown ({', '.join(ROUTER_INPUTS)})")
        if self.aux_margin is not None and self.aux_margin < 0:
            raise ConfigError(f"routing.aux_margin must be >= 0 (or null: off), got {self.aux_margin}")
        if not 0.0 < self.capacity <= 1.0:
            raise ConfigError(f"routing.capacity must be in (0, 1], got {self.capacity}")
        if not all(0.0 < c <= 1.0 for c in self.layer_capacity):
            raise ConfigError(f"routing.layer_capacity must be capacities in (0, 1], got {list(self.layer_capacity)}")
        if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
            raise ConfigError(f"routing.layers must be distinct layer indices >= 0, got {self.layers}")
        if isinstance(self.schedule, dict):  # built from a plain dict (e.g. checkpoint hparams)
            self.schedule = ScheduleConfig(**self.schedule)
        if self.placement == "last_n" and self.n_last < 1:
            raise ConfigError("routing.placement=last_n needs routing.n_last >= 1")
        for name, table in (("task_capacity", self.task_capacity), ("task_layers", self.task_layers)):
            unknown = set(table) - set(TASKS)
            if unknown:
                raise ConfigError(f"routing.{name} has unknown task(s) {sorted(unknown)} (known: {', '.join(TASKS)})")
        for task, caps in self.task_capacity.items():
            if not caps or not all(0.0 < c <= 1.0 for c in caps):
                raise ConfigError(f"routing.task_capacity.{task} must be capacities in (0, 1], got {list(caps)}")
        if self.plan is not None and self.kind == "dense":
            raise ConfigError("routing.plan needs routers: use routing=mod or routing=unimod")
        if self.kind == "unimod" and not self.task_capacity and self.plan is None:
            raise ConfigError("routing.kind=unimod needs routing.task_capacity (per task capacities) or routing.plan")

    def block_options(self) -> dict:
        """The keyword arguments of a routed layer (RoutedBlock, HFRoutedLayer) besides its capacities."""
        return {
            "weight": self.weight,
            "causal": self.causal,
            "temperature": self.temperature,
            "router_input": self.router_input,
            "aux_margin": self.aux_margin,
        }

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
        if self.placement == "last_n":
            if self.n_last > n_layer:
                raise ConfigError(f"routing.n_last={self.n_last} but the model has {n_layer} layers")
            return list(range(n_layer - self.n_last, n_layer))
        return list(range(n_layer))

    def task_layer_capacity(self, n_layer: int) -> dict[str, dict[int, float]]:
        """unimod: {task: {layer: capacity}} for the tasks that are routed somewhere."""
        if self.plan is not None:
            return self._plan_capacities(n_layer)
        default_layers = self.routed_layers(n_layer)
        out = {}
        for task, caps in self.task_capacity.items():
            layers = list(self.task_layers.get(task, default_layers))
            bad = [i for i in layers if not 0 <= i < n_layer]
            if bad:
                raise ConfigError(
                    f"routing.task_layers.{task} {bad} out of range: the model has layers 0..{n_layer - 1}"
                )
            caps = list(caps) * len(layers) if len(caps) == 1 else list(caps)
            if len(caps) != len(layers):
                raise ConfigError(
                    f"routing.task_capacity.{task} has {len(caps)} values for {len(layers)} routed layers"
                )
            out[task] = dict(zip(layers, caps))
        return out

    def _plan_capacities(self, n_layer: int) -> dict[str, dict[int, float]]:
        """{task: {layer: capacity}} of the plan file."""
        plan = load_plan(self.plan)
        if plan.n_layer != n_layer:
            raise ConfigError(f"routing plan {self.plan} is for {plan.n_layer} layers; the model has {n_layer}")
        return {t: dict(zip(p.layers, p.capacity)) for t, p in plan.tasks.items()}

    def _mod_plan(self, n_layer: int) -> dict[int, float]:
        """mod: {layer: capacity} of the plan's one task (one router; every token competes)."""
        per_task = self._plan_capacities(n_layer)
        if len(per_task) != 1:
            raise ConfigError(
                f"routing=mod has one router per layer: its plan must route one task, {self.plan} routes "
                f"{sorted(per_task) or 'none'} (use routing=unimod for per-task plans)"
            )
        return dict(sorted(next(iter(per_task.values())).items()))

    def resolved(self, n_layer: int) -> RoutingConfig:
        """The same routing with a plan file read into task_layers / task_capacity, so a
        checkpoint keeps the routing it was trained with even if the plan file goes away."""
        if self.plan is None:
            return self
        if self.kind == "mod":
            caps = self._mod_plan(n_layer)
            return replace(self, plan=None, layers=list(caps), layer_capacity=list(caps.values()))
        per_task = self.task_layer_capacity(n_layer)
        return replace(
            self,
            plan=None,
            task_layers={t: list(c) for t, c in per_task.items()},
            task_capacity={t: list(c.values()) for t, c in per_task.items()},
        )

    def layer_capacities(self, n_layer: int) -> dict[int, list[float]]:
        """{layer: one capacity per router}: MoD has one router, UniMoD one per task id (a task
        not routed in a layer gets capacity 1.0 there: all its tokens run the block)."""
        if self.kind == "mod" and self.plan is not None:
            return {i: [c] for i, c in self._mod_plan(n_layer).items()}
        if self.kind == "mod":
            layers = self.routed_layers(n_layer)
            caps = list(self.layer_capacity) or [self.capacity] * len(layers)
            if len(caps) != len(layers):
                raise ConfigError(
                    f"routing.layer_capacity has {len(caps)} values for {len(layers)} routed layers {layers}"
                )
            return {i: [c] for i, c in zip(layers, caps)}
        if self.kind == "dense":
            return {}
        per_task = self.task_layer_capacity(n_layer)
        layers = sorted({i for caps in per_task.values() for i in caps})
        return {i: [per_task.get(t, {}).get(i, 1.0) for t in TASKS] for i in layers}
