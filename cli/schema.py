"""Structured-config schemas: every config group is backed by a dataclass, so a key typo or a
wrong type fails at start with Hydra's message, and `validate` range-checks the values by
building the dataclasses (their __post_init__ raise ConfigError).

The library's own dataclasses (ModelConfig, DataConfig, ...) are the schemas of their groups;
only the edge-only groups (trainer, callbacks, logger, paths) are defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from modlab.analysis.config import AnalysisConfig, CalibrationConfig
from modlab.data.config import DataConfig
from modlab.errors import ConfigError
from modlab.evaluation.harness_config import HarnessConfig
from modlab.mindskip.config import MindSkipConfig
from modlab.models.config import ModelConfig
from modlab.routing.config import RoutingConfig
from modlab.training.config import (
    CallbacksConfig,
    EvalConfig,
    LoggerConfig,
    ObjectiveConfig,
    TrainerConfig,
)


@dataclass
class PathsConfig:
    output_dir: str = "outputs"


DIRECTIONS = ("maximize", "minimize")


@dataclass
class SearchConfig:
    """What `modlab train` returns to a Hydra sweeper that optimises (hparams_search=...,
    docs/cluster.md): the mean of `metrics`, or, for a run over a training-FLOPs budget, a penalty
    worse than any run within it (`worst` -/+ how far over the budget it is, as a fraction, so the
    sampler still learns which way the budget lies). No metrics: the run returns its metrics dict."""

    metrics: list[str] = field(default_factory=list)  # e.g. [test/t2i_acc, test/mmu_acc]
    direction: str = "maximize"  # as the sweeper's (hydra.sweeper.direction)
    max_flops_per_step: float = 0.0  # budget on train/flops_per_step; 0: none
    max_flops_ratio: float = 0.0  # budget on train/flops_ratio (of the dense model's FLOPs); 0: none
    # the worst value a run within the budget can score: 0 for accuracies (the default when
    # maximising); needed when minimising with a budget (e.g. a loss's upper bound)
    worst: float | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"search.direction '{self.direction}' is unknown ({', '.join(DIRECTIONS)})")
        if self.max_flops_per_step < 0 or not 0 <= self.max_flops_ratio:
            raise ConfigError("search.max_flops_per_step and search.max_flops_ratio must be >= 0 (0: no budget)")
        budget = self.max_flops_per_step or self.max_flops_ratio
        if budget and self.direction == "minimize" and self.worst is None:
            raise ConfigError(
                "search.worst is needed to penalise runs over the FLOPs budget when minimising "
                "(a value no run within the budget scores above, e.g. search.worst=10)"
            )

    def objective(self, metrics: dict) -> tuple[float, float]:
        """(the value for the sweeper, how far over the budget the run is: 0 within it)."""
        missing = [m for m in self.metrics if m not in metrics]
        if missing:
            known = ", ".join(sorted(k for k in metrics if k.startswith(("test/", "val/"))))
            raise ConfigError(f"search.metrics {missing} are not among the run's metrics ({known})")
        over = 0.0
        for key, budget in (
            ("train/flops_per_step", self.max_flops_per_step),
            ("train/flops_ratio", self.max_flops_ratio),
        ):
            if budget:
                if key not in metrics:
                    raise ConfigError(f"a FLOPs budget on {key}, which this model family does not report")
                over = max(over, metrics[key] / budget - 1)
        if over > 0:
            worst = 0.0 if self.worst is None else self.worst
            return (worst - over if self.direction == "maximize" else worst + over), over
        return sum(metrics[m] for m in self.metrics) / len(self.metrics), 0.0


@dataclass
class TrainConfig:
    command: str = "train"
    experiment_name: str = "default"
    seed: int = 42
    init_from: str | None = None  # a checkpoint to fine-tune from (dense -> routed: UniMoD's protocol)
    dry_run: bool = False  # build the model and data, measure a step's training FLOPs, train nothing
    resume: str | None = None  # a run directory or checkpoint: continue that (killed) run exactly
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    mindskip: MindSkipConfig = field(default_factory=MindSkipConfig)  # objective=lm: Router-Tuning
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)  # the objective a sweeper optimises
    debug: dict[str, Any] | None = None  # a debug profile, merged last (see validate)


@dataclass
class EvalCommandConfig:
    command: str = "eval"
    experiment_name: str = "default"
    ckpt_path: str = MISSING
    seed: int = 42
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)  # lm-evaluation-harness tasks (causal LMs)
    debug: dict[str, Any] | None = None


@dataclass
class GenerateConfig:
    command: str = "generate"
    experiment_name: str = "default"
    ckpt_path: str = MISSING
    seed: int = 42
    prompts: list[str] = field(default_factory=list)  # empty: "a handwritten <d>" for d = 0..9
    samples_per_prompt: int = 8
    mmu_images: int = 16  # test images to answer "what digit is this?" about
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.mmu_images < 0:
            raise ConfigError("samples_per_prompt must be >= 1 and mmu_images >= 0")


@dataclass
class AnalyzeConfig:
    command: str = "analyze"
    experiment_name: str = "default"
    ckpt_path: str | None = None  # a modlab checkpoint (required unless `model` is given)
    seed: int = 42
    # auto: bf16 autocast where the CPU multiplies bf16 fast (4x fp32 here), else fp32; 32-true for exact figures
    precision: str = "auto"
    model: ModelConfig | None = None  # model=hf_causal_lm model.path=DIR: a Hugging Face LM, no checkpoint
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self) -> None:
        if (self.ckpt_path is None) == (self.model is None):
            raise ConfigError(
                "analyze needs ckpt_path=<a modlab checkpoint> or model=hf_causal_lm model.path=<dir> (one of them)"
            )
        if self.precision not in ("auto", "32-true", "bf16-mixed"):
            raise ConfigError(f"precision must be auto, 32-true or bf16-mixed, got {self.precision!r}")


@dataclass
class CompareConfig:
    command: str = "compare"
    experiment_name: str = "compare"
    runs: list[str] = field(default_factory=list)  # run directories or sweep directories
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError("compare needs run directories: modlab compare DIR [DIR...] (or a sweep directory)")


SCHEMAS = {
    "train": TrainConfig,
    "eval": EvalCommandConfig,
    "generate": GenerateConfig,
    "analyze": AnalyzeConfig,
    "compare": CompareConfig,
}


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=node)


def validate(cfg: DictConfig) -> Any:
    """The typed, range-checked config object (a dataclass instance) for a composed config.

    A debug profile (`debug=fast`) is applied here, after composition: `+experiment=X` is
    appended to the defaults list after `debug`, so a profile composed by Hydra alone would lose
    to any experiment that sets the same keys (e.g. trainer.max_steps). Values the user set on
    the command line still win over the profile."""
    debug = cfg.get("debug")
    if debug:
        explicit = _command_line_keys()
        cfg = cfg.copy()
        for key, value in _flatten(OmegaConf.to_container(debug)):
            if key not in explicit:
                if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                    raise ConfigError(f"debug profile sets '{key}', which this command's config does not have")
                OmegaConf.update(cfg, key, value, merge=False)
        cfg.debug = None
    return OmegaConf.to_object(cfg)


_ABSENT = object()


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _command_line_keys() -> set[str]:
    """Keys the user overrode on the command line (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {override.split("=", 1)[0].lstrip("+~") for override in HydraConfig.get().overrides.task}
