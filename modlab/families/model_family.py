"""The interface every model family implements once (see modlab.families for the registry).

The commands are generic: `modlab train` calls `build` and fits what it returns, `modlab eval`
calls `load` then `evaluate`, `modlab analyze` calls `load` (or `load_pretrained` for a model
that needs no checkpoint) then `analysis_target`. A `run` argument is the validated command
config (a dataclass with model, data, objective, routing, mindskip, eval, trainer, seed, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modlab.errors import ConfigError


@dataclass
class PlanSpec:
    """How `analyze redundancy` turns ARank into a routing plan for this model
    (modlab.analysis.plan_from_arank): the training workload the FLOPs target is measured on, how
    a planned step's FLOPs are counted, and the command that trains with the plan."""

    data_cfg: object  # its training data: rows per task per step, LM row length
    command: str  # e.g. "modlab train +experiment=showo_unimod": the plan's routing.plan= goes after it
    tasks: tuple[str, ...] | None = None  # the tasks a plan routes (None: analysis.plan.tasks)
    model_cfg: object = None  # a modlab model: FLOPs by modlab.flops on this config ...
    vocab_size: int = 0
    # ... or flops_ratio(layer_caps {task: {layer: C}}, workload {task: (rows, tokens)}) -> ratio
    flops_ratio: Callable[[dict, dict], float] | None = None
    exclude_layers: frozenset[int] = frozenset()  # layers that must keep every token


@dataclass
class AnalysisTarget:
    """What an analysis job works on: the loaded model, its layers (a Subject) and the
    calibration batches per task, plus what only some families offer."""

    loaded: object  # what `load` returned (e.g. a UnifiedModule)
    subject: object  # modlab.analysis.subject.Subject
    batches: dict[str, list[dict]]  # {task: [collated batch, ...]}
    # (importance job) task metrics to re-measure with each layer dropped: {name: fn() -> float}
    task_metrics: Callable[..., dict] | None = None
    plan: PlanSpec | None = None  # None: `redundancy` writes no routing plan (info says why)
    info: dict = field(default_factory=dict)  # more for results.json


class ModelFamily:
    """Defaults raise a one-line ConfigError, so a family implements only what it supports
    (its FamilySpec says which commands and analyses that is)."""

    name = "family"

    def build(self, run) -> tuple[object, object]:
        """(LightningModule, LightningDataModule) for `modlab train`, with `run.init_from` applied."""
        raise ConfigError(f"model family '{self.name}' cannot be trained")

    def describe(self, module) -> dict:
        """Parameter counts and the like for the training log and metrics.json."""
        return {}

    def after_fit(self, module, trainer, out_dir: Path) -> dict:
        """Metrics only the training run knows (e.g. FLOPs per step); files beside the checkpoints."""
        return {}

    def after_test(self, module, trainer, out_dir: Path, metrics: dict) -> dict:
        """Rank 0, after testing the best checkpoint: more metrics or files (e.g. a router file)."""
        return {}

    def new_lm(self, model_cfg):
        """(a fresh causal LM of `model_cfg`, its tokenizer): what objective=lm trains."""
        raise ConfigError(
            f"objective=lm needs a causal LM (model=lm or model=hf_causal_lm), not model.arch={model_cfg.arch}"
        )

    def load(self, ckpt_path: str):
        """A trained model from one of this family's checkpoints, in eval mode."""
        raise ConfigError(f"model family '{self.name}' has no checkpoints to load")

    def load_for_analysis(self, ckpt_path: str):
        """What `modlab analyze ckpt_path=...` works on (by default what `load` returns)."""
        return self.load(ckpt_path)

    def dry_run(self, run) -> dict:
        """`modlab train ... dry_run=true`: build everything, train nothing; what a run would cost."""
        module, _ = self.build(run)
        return self.describe(module)

    def load_pretrained(self, model_cfg):
        """A model that needs no modlab checkpoint (e.g. a Hugging Face directory)."""
        raise ConfigError(
            f"model family '{self.name}' is analysed from its checkpoint (ckpt_path=...), not from model=..."
        )

    def evaluate(self, loaded, run, out_dir: Path) -> dict:
        raise ConfigError(f"model family '{self.name}' has no evaluation")

    def harness_variants(self, loaded) -> tuple[dict, object, object]:
        """lm-evaluation-harness (`modlab eval harness.tasks=[...]`): ({"base": logits_fn,
        "routed": logits_fn}, the text tokenizer, the device), logits_fn(ids (1, T)) -> (1, T, vocab)."""
        raise ConfigError(f"model family '{self.name}' is not a causal LM: lm-evaluation-harness does not apply")

    def generate(self, loaded, run, out_dir: Path) -> dict:
        raise ConfigError(f"model family '{self.name}' does not generate images")

    def analysis_target(self, loaded, calibration, seed: int) -> AnalysisTarget:
        raise ConfigError(f"model family '{self.name}' cannot be analysed")
