"""Objective, optimiser and evaluation settings (plain dataclasses; config-group schemas)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modlab.data.tokens import TASKS
from modlab.errors import ConfigError

TASK_NAMES = ("unified", "lm")  # unified: the Show-o-like tasks; lm: causal LMs (pretraining, Router-Tuning)


@dataclass
class TaskConfig:
    name: str = "unified"
    # Show-o weights its objectives 1.0 / 1.0 / 0.1 (T2I / MMU / LM)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"t2i": 1.0, "mmu": 1.0, "lm": 0.1})
    cond_dropout: float = 0.1  # caption dropout for classifier-free guidance
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])

    def __post_init__(self) -> None:
        if self.name not in TASK_NAMES:
            raise ConfigError(f"task.name '{self.name}' is unknown ({', '.join(TASK_NAMES)})")
        unknown = set(self.loss_weights) - set(TASKS)
        if unknown:
            raise ConfigError(f"task.loss_weights has unknown task(s) {sorted(unknown)} (known: {', '.join(TASKS)})")
        if any(w < 0 for w in self.loss_weights.values()):
            raise ConfigError("task.loss_weights must be >= 0")
        if self.lr <= 0:
            raise ConfigError(f"task.lr must be > 0, got {self.lr}")
        if not 0 <= self.cond_dropout < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("task.cond_dropout must be in [0, 1) and task.min_lr_ratio in [0, 1]")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("task.warmup_steps and task.weight_decay must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("task.betas must be two numbers in [0, 1)")


@dataclass
class EvalConfig:
    t2i_per_digit: int = 20  # images sampled per digit for test/t2i_acc
    t2i_per_category: int = 50  # digit scenes: prompts per category for test/t2i_acc
    maskgit_steps: int = 12
    guidance: float = 1.5  # classifier-free guidance scale (0 = off)
    temperature: float = 1.0
    max_answer_tokens: int = 16
    mmu_max_rows: int = 0  # 0: the whole test split
    lm_max_rows: int = 0  # 0: the whole held-out text
    ref_classifier_epochs: int = 30
    seed: int = 1234
    # causal LMs (`modlab eval` of an LM checkpoint): batch-1 generation speed on held-out prompts
    speed_prompts: int = 8  # prompts timed (0: no speed measurement)
    speed_context: int = 256  # prompt tokens (prefill)
    speed_new_tokens: int = 64  # generated tokens (decode)
    speed_repeats: int = 5  # rounds; the median is reported

    def __post_init__(self) -> None:
        if self.t2i_per_category < 1:
            raise ConfigError("eval.t2i_per_category must be >= 1")
        if self.t2i_per_digit < 1 or self.maskgit_steps < 1 or self.max_answer_tokens < 1:
            raise ConfigError("eval.t2i_per_digit, eval.maskgit_steps and eval.max_answer_tokens must be >= 1")
        if self.guidance < 0 or self.temperature < 0:
            raise ConfigError("eval.guidance and eval.temperature must be >= 0")
        if self.speed_prompts < 0 or self.speed_context < 1 or self.speed_new_tokens < 2 or self.speed_repeats < 1:
            raise ConfigError(
                "eval.speed_prompts must be >= 0, speed_context and speed_repeats >= 1, speed_new_tokens >= 2"
            )
        if self.mmu_max_rows < 0 or self.lm_max_rows < 0 or self.ref_classifier_epochs < 1:
            raise ConfigError("eval.mmu_max_rows and eval.lm_max_rows must be >= 0, eval.ref_classifier_epochs >= 1")
