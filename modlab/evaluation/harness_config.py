"""The `harness` group of `modlab eval` (lm-evaluation-harness; modlab.evaluation.harness)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modlab.errors import ConfigError


@dataclass
class HarnessConfig:
    """The `harness` group of `modlab eval`."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task names; empty: no harness evaluation
    include_path: str | None = None  # a directory of your own task YAML files
    limit: int = 0  # > 0: at most this many documents per task
    num_fewshot: int | None = None
    max_length: int = 2048  # tokens a request may use (left-truncated)
    max_gen_toks: int = 256  # generate_until default when the task sets none

    def __post_init__(self) -> None:
        if self.limit < 0 or self.max_length < 2 or self.max_gen_toks < 1:
            raise ConfigError("harness.limit must be >= 0, harness.max_length >= 2, harness.max_gen_toks >= 1")
