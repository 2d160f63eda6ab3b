"""Analysis settings (plain dataclasses; the `analysis` config group's schema)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modlab.analysis.jobs import JOBS
from modlab.data.tokens import TASKS
from modlab.errors import ConfigError

ARANK_KINDS = ("pre_softmax", "post_softmax")


@dataclass
class CalibrationConfig:
    """The held-out rows every analysis runs on: n rows per task, drawn with a seed."""

    n_per_task: int = 64
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    split: str = "val"  # val | test | train (the digits split and the matching slice of the text)
    # rows per forward: small enough that a real model's batch takes seconds (progress lines every
    # 30 s) and its activations stay small; the figures are per row or per token, whatever the batching
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_per_task < 1:
            raise ConfigError(f"calibration.n_per_task must be >= 1, got {self.n_per_task}")
        if self.batch_size < 1:
            raise ConfigError(f"calibration.batch_size must be >= 1, got {self.batch_size}")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ConfigError(
                f"calibration.tasks must be a non-empty list of {', '.join(TASKS)}, got {list(self.tasks)}"
            )
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"calibration.split '{self.split}' is unknown (train, val, test)")


@dataclass
class ARankConfig:
    kind: str = "pre_softmax"  # pre_softmax: rank(Q_h K_h^T) | post_softmax: rank of the masked softmax map
    # singular values above rtol * the largest count toward the rank (float64 SVD)
    rtol: float = 1e-2

    def __post_init__(self) -> None:
        if self.kind not in ARANK_KINDS:
            raise ConfigError(f"analysis.arank.kind '{self.kind}' is unknown ({', '.join(ARANK_KINDS)})")
        if not 0.0 < self.rtol < 1.0:
            raise ConfigError(f"analysis.arank.rtol must be in (0, 1), got {self.rtol}")


@dataclass
class PlanConfig:
    """How `redundancy` turns ARank into a routing plan (modlab.analysis.plan_from_arank): ARank
    relative to its bound ranks (task, layer) pairs; capacities are allocated, most redundant
    pairs lowest, until the training-FLOPs ratio of the planned model is `target_flops_ratio`."""

    write: bool = True
    tasks: list[str] = field(default_factory=lambda: ["t2i", "mmu"])  # routed tasks; others run dense
    fraction: float = 0.5  # candidates: the more redundant half of each task's layers
    min_capacity: float = 0.1
    max_capacity: float = 1.0
    importance: bool = False  # also rank layers by LLM-Drop block importance (rank sum with ARank)
    # training FLOPs of the planned model / the dense model (modlab.flops); Show-o's paper: ~0.85
    target_flops_ratio: float = 0.85

    def __post_init__(self) -> None:
        if not 0.0 < self.target_flops_ratio <= 1.0:
            raise ConfigError(f"analysis.plan.target_flops_ratio must be in (0, 1], got {self.target_flops_ratio}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"analysis.plan.fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 < self.min_capacity <= self.max_capacity <= 1.0:
            raise ConfigError("analysis.plan needs 0 < min_capacity <= max_capacity <= 1")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ConfigError(
                f"analysis.plan.tasks must be a non-empty list of {', '.join(TASKS)}, got {list(self.tasks)}"
            )


@dataclass
class ImportanceConfig:
    drop_layer: bool = True  # (a) skip each layer at evaluation: task losses and metrics
    metrics: bool = True  # (a) also the task metrics (MMU answers, T2I samples), not only losses
    # small on purpose (each is re-measured with every layer dropped): about 2 minutes on 2 cores
    t2i_per_digit: int = 2  # T2I prompts per digit for the sampled-image accuracy
    mmu_prompts: int = 32  # MMU prompts answered greedily
    maskgit_steps: int = 6
    classifier_epochs: int = 5  # the reference digit classifier that scores T2I samples

    def __post_init__(self) -> None:
        if min(self.t2i_per_digit, self.mmu_prompts, self.maskgit_steps, self.classifier_epochs) < 1:
            raise ConfigError(
                "analysis.importance: t2i_per_digit, mmu_prompts, maskgit_steps, classifier_epochs must be >= 1"
            )


@dataclass
class InteractionsConfig:
    """(a) single-task vs joint training, (b) shared vs task routers (modlab.analysis.interactions).

    (b) tunes the routers alone until their routing stops moving (`router_competition`: checks
    every router_eval_every steps, stops after router_patience calm checks, at most
    router_max_steps), for every seed in `seeds`; (a) runs every seed at equal steps per task."""

    joint_training: bool = True  # (a) single-task vs joint training from scratch
    shared_router: bool = True  # (b) one shared router with a joint budget vs task routers
    steps: int = 30  # optimiser steps of each (a) run
    batch_size: int = 12  # rows per task per step
    lr: float = 2e-3
    router_lr: float = 1e-2  # only the routers train in (b), from random init
    capacity: float = 0.25  # (b): the budget; routed layers: the last half
    tasks: list[str] = field(default_factory=lambda: ["t2i", "mmu"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # (a) and (b) are repeated per seed
    eval_every: int = 0  # (a): held-out losses every this many steps (0: at the end only)
    router_max_steps: int = 300  # (b): router-only steps at most
    router_eval_every: int = 10  # (b): steps between two measurements of the routing
    router_tol: float = 0.01  # (b): calm = kept fractions and flipped decisions moved less than this
    router_patience: int = 2  # (b): calm checks in a row that count as converged

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("analysis.interactions.steps and batch_size must be >= 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"analysis.interactions.seeds must be distinct seeds, at least one, got {self.seeds}")
        if self.eval_every < 0 or min(self.router_max_steps, self.router_eval_every, self.router_patience) < 1:
            raise ConfigError(
                "analysis.interactions: eval_every must be >= 0, router_max_steps, router_eval_every and "
                "router_patience >= 1"
            )
        if not 0.0 < self.router_tol < 1.0:
            raise ConfigError(f"analysis.interactions.router_tol must be in (0, 1), got {self.router_tol}")
        if self.lr <= 0 or self.router_lr <= 0:
            raise ConfigError("analysis.interactions.lr and router_lr must be > 0")
        if not 0.0 < self.capacity <= 1.0:
            raise ConfigError(f"analysis.interactions.capacity must be in (0, 1], got {self.capacity}")
        if len(set(self.tasks)) < 2 or set(self.tasks) - set(TASKS):
            raise ConfigError(f"analysis.interactions.tasks must name at least two of {', '.join(TASKS)}")


@dataclass
class AnalysisConfig:
    job: str = "redundancy"
    arank: ARankConfig = field(default_factory=ARankConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    interactions: InteractionsConfig = field(default_factory=InteractionsConfig)

    def __post_init__(self) -> None:
        if self.job not in JOBS:
            raise ConfigError(f"unknown analysis job '{self.job}' (jobs: {', '.join(JOBS)})")
