"""The routing plan file: per task, which layers are routed and at what capacity.

`modlab analyze redundancy` writes one; `routing.plan=<file>` makes training use it. It is a small
YAML file a researcher can also write or edit by hand:

    # modlab routing plan
    format: modlab-routing-plan
    version: 1
    n_layer: 4                 # the depth it was derived for; a model of another depth is refused
    tasks:                     # tasks not listed run dense in every layer
      t2i: {layers: [2, 3], capacity: [0.8, 0.8]}
      mmu: {layers: [1, 2, 3], capacity: [0.5, 0.4, 0.2]}
    source: {...}              # optional, free-form: what it was derived from (checkpoint, ARank)

A layer listed for some tasks and not others is routed for those only (UniMoD's layer switch:
T2I-routed, MMU-routed, or both); capacities are in (0, 1], one per listed layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from modlab.data.tokens import TASKS
from modlab.errors import ConfigError

PLAN_FORMAT = "modlab-routing-plan"
PLAN_VERSION = 1


@dataclass
class TaskPlan:
    layers: list[int]
    capacity: list[float]


@dataclass
class RoutingPlan:
    n_layer: int
    tasks: dict[str, TaskPlan]
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"routing plan: unknown task(s) {unknown} (known: {', '.join(TASKS)})")
        for name, tp in self.tasks.items():
            if len(tp.layers) != len(tp.capacity):
                raise ConfigError(
                    f"routing plan: task {name} lists {len(tp.layers)} layers but {len(tp.capacity)} capacities"
                )
            if len(set(tp.layers)) != len(tp.layers) or not all(0 <= i < self.n_layer for i in tp.layers):
                raise ConfigError(
                    f"routing plan: task {name} layers {tp.layers} must be distinct, in 0..{self.n_layer - 1}"
                )
            if not all(0.0 < c <= 1.0 for c in tp.capacity):
                raise ConfigError(f"routing plan: task {name} capacities must be in (0, 1], got {tp.capacity}")

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "n_layer": self.n_layer,
            "tasks": {
                t: {"layers": list(p.layers), "capacity": [float(c) for c in p.capacity]} for t, p in self.tasks.items()
            },
            "source": self.source,
        }


def plan_text(plan: RoutingPlan) -> str:
    """The plan file's YAML text."""
    return "# modlab routing plan (see modlab/routing/plan_file.py)\n" + yaml.safe_dump(plan.to_dict(), sort_keys=False)


def save_plan(plan: RoutingPlan, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan_text(plan))
    return path


def load_plan(path: str | Path) -> RoutingPlan:
    """Read and check a plan file; every problem is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"routing plan file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"routing plan {path} is not valid YAML ({type(e).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
        raise ConfigError(f"{path} is not a modlab routing plan (expected 'format: {PLAN_FORMAT}')")
    if raw.get("version") != PLAN_VERSION:
        raise ConfigError(
            f"routing plan {path} has version {raw.get('version')}; this modlab reads version {PLAN_VERSION}"
        )
    try:
        tasks = {
            str(t): TaskPlan([int(i) for i in p["layers"]], [float(c) for c in p["capacity"]])
            for t, p in raw["tasks"].items()
        }
        return RoutingPlan(int(raw["n_layer"]), tasks, dict(raw.get("source") or {}))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(
            f"routing plan {path} is malformed ({type(e).__name__}: {e}); see modlab/routing/plan_file.py"
        ) from None
