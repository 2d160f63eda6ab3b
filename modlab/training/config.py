"""Objective, optimiser, evaluation, Trainer, callbacks and logger settings (plain dataclasses:
the schemas of their config groups)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from modlab.data.tokens import TASKS
from modlab.errors import ConfigError

# unified: the T2I / MMU / LM tasks of a unified model; lm: causal LMs (pretraining, Router-Tuning)
OBJECTIVES = ("unified", "lm")
# what trains: auto (Router-Tuning: the routers; anything else: every weight) | all | routers
TRAINABLE = ("auto", "all", "routers")


@dataclass
class ObjectiveConfig:
    name: str = "unified"
    # Show-o weights its objectives 1.0 / 1.0 / 0.1 (T2I / MMU / LM)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"t2i": 1.0, "mmu": 1.0, "lm": 0.1})
    cond_dropout: float = 0.1  # caption dropout for classifier-free guidance
    lr: float = 2e-3  # as conf/objective/unified.yaml (lm.yaml sets 3e-3)
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # routers: only the routers (MoD routers and causal predictors, or MindSkip's) train, the
    # model is frozen, as Router-Tuning does; all: every weight; auto: routers for MindSkip, else all
    trainable: str = "auto"

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"objective.name '{self.name}' is unknown ({', '.join(OBJECTIVES)})")
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"objective.trainable '{self.trainable}' is unknown ({', '.join(TRAINABLE)})")
        unknown = set(self.loss_weights) - set(TASKS)
        if unknown:
            raise ConfigError(
                f"objective.loss_weights has unknown task(s) {sorted(unknown)} (known: {', '.join(TASKS)})"
            )
        if any(w < 0 for w in self.loss_weights.values()):
            raise ConfigError("objective.loss_weights must be >= 0")
        if self.lr <= 0:
            raise ConfigError(f"objective.lr must be > 0, got {self.lr}")
        if not 0 <= self.cond_dropout < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("objective.cond_dropout must be in [0, 1) and objective.min_lr_ratio in [0, 1]")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("objective.warmup_steps and objective.weight_decay must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("objective.betas must be two numbers in [0, 1)")


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
    # causal LMs: also the static LLM-Drop baselines that drop these numbers of attention layers
    # (least important first on calibration rows): test/ppl_static_drop_<n>, test/static_drop_<n>_layers
    static_drop_counts: list[int] = field(default_factory=list)

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
        if any(n < 1 for n in self.static_drop_counts):
            raise ConfigError(f"eval.static_drop_counts must be >= 1, got {list(self.static_drop_counts)}")
        if self.mmu_max_rows < 0 or self.lm_max_rows < 0 or self.ref_classifier_epochs < 1:
            raise ConfigError("eval.mmu_max_rows and eval.lm_max_rows must be >= 0, eval.ref_classifier_epochs >= 1")


# ---- the Lightning edge: Trainer, callbacks, logger ------------------------------------------

TEST_CHECKPOINTS = ("best", "last")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1  # -1: every device of the node (Lightning's devices=-1)
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"  # auto: bf16-mixed where the hardware has fast bf16, else 32-true
    max_steps: int = 600
    val_check_interval: int = 200  # optimiser steps between validations
    val_batches: int = 0  # batches per validation; 0: the whole validation split
    log_every_n_steps: int = 25
    gradient_clip_val: float = 1.0
    fast_dev_run: int = 0  # > 0: run that many batches of fit and test, no checkpoints
    deterministic: bool = False
    # a NaN / inf loss or router logit: false stops the run (one line naming the step and layer),
    # true skips that step and counts it (train/skipped_steps in metrics.json)
    skip_nonfinite: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision '{self.precision}' is unknown ({', '.join(PRECISIONS)})")
        if self.max_steps < 1 or self.num_nodes < 1 or not (self.devices >= 1 or self.devices == -1):
            raise ConfigError("trainer.max_steps and trainer.num_nodes must be >= 1, trainer.devices >= 1 or -1 (all)")
        if self.strategy.startswith("fsdp") and self.accelerator not in ("gpu", "cuda"):
            # Lightning's FSDPStrategy runs on CUDA only; data-parallel on CPUs is trainer=ddp_cpu
            raise ConfigError(
                f"trainer.strategy={self.strategy} needs GPUs (trainer.accelerator=gpu); on CPUs use trainer=ddp_cpu"
            )
        if self.val_check_interval < 1 or self.log_every_n_steps < 1 or self.fast_dev_run < 0:
            raise ConfigError("trainer.val_check_interval and trainer.log_every_n_steps must be >= 1")
        if self.gradient_clip_val < 0 or self.val_batches < 0:
            raise ConfigError("trainer.gradient_clip_val and trainer.val_batches must be >= 0")


@dataclass
class CallbacksConfig:
    progress_bar: bool = True  # rich progress bar
    # a progress line (step, loss, steps/s, time left) every this many seconds in the log file,
    # and on the console when it is not a terminal (a file, a batch job); 0: never
    progress_interval_s: float = 30.0
    model_summary: bool = True  # rich model summary at the start
    checkpoint: bool = True  # last.ckpt + best-*.ckpt (by `monitor`)
    monitor: str = "val/loss"
    lr_monitor: bool = True
    # also write last.ckpt every this many optimiser steps (what `resume=` continues from); 0: only
    # after each validation
    checkpoint_every_n_steps: int = 0
    # which weights `modlab train` tests after fit: best (by `monitor`, at a validation) or last (the
    # end of training, whatever step the last validation fell on: a comparison at matched budgets)
    test_checkpoint: str = "best"

    def __post_init__(self) -> None:
        if self.checkpoint_every_n_steps < 0 or self.progress_interval_s < 0:
            raise ConfigError("callbacks.checkpoint_every_n_steps and callbacks.progress_interval_s must be >= 0")
        if self.test_checkpoint not in TEST_CHECKPOINTS:
            raise ConfigError(
                f"callbacks.test_checkpoint '{self.test_checkpoint}' is unknown ({', '.join(TEST_CHECKPOINTS)})"
            )


# built by modlab.training.trainer.make_logger
LOGGERS = ("csv", "none", "tensorboard", "mlflow", "wandb")
# those of an optional extra: (modules any one of which it needs, the extra that installs one);
# mlflow-skinny is enough for MLflow (it provides the `mlflow` module)
OPTIONAL_LOGGERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
    "wandb": (("wandb",), "wandb"),
}


@dataclass
class LoggerConfig:
    kind: str = "csv"

    def __post_init__(self) -> None:
        if self.kind not in LOGGERS:
            raise ConfigError(f"logger.kind '{self.kind}' is unknown ({', '.join(LOGGERS)})")
        if self.kind in OPTIONAL_LOGGERS:  # at start, not after the model and data are built
            modules, extra = OPTIONAL_LOGGERS[self.kind]
            if not any(importlib.util.find_spec(m) is not None for m in modules):
                raise ConfigError(f"logger={self.kind} needs the {modules[0]} package (pip install 'modlab[{extra}]')")
