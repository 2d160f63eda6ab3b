"""Collect finished runs (their metrics.json and Hydra config) into one table for comparison.

A path is a run directory (it holds metrics.json) or any directory above runs, e.g. a sweep
directory: every run below it is taken. Plain files only: no torch needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from modlab.errors import DataError
from modlab.outputs import ERROR_FILE

COST = "train/flops_per_step"
LOWER_IS_BETTER = ("ppl", "fid", "loss")


def failed_runs(paths: list[str]) -> list[dict]:
    """The failed jobs of sweeps: directories with an error.txt and no metrics.json, and their error."""
    failed = []
    for p in map(Path, paths):
        for e in sorted(p.rglob(ERROR_FILE)) if p.is_dir() else []:
            if not (e.parent / "metrics.json").is_file():
                failed.append({"run": str(e.parent), "error": e.read_text(errors="replace").strip()})
    return failed


def find_runs(paths: list[str]) -> list[Path]:
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"run directory '{p}' does not exist")
        if not p.is_dir():
            raise DataError(f"'{p}' is a file, not a run or sweep directory")
        found = [p] if (p / "metrics.json").is_file() else sorted(m.parent for m in p.rglob("metrics.json"))
        if not found and not failed_runs([str(p)]):
            raise DataError(f"'{p}' holds no finished run (no metrics.json in it or below it)")
        runs += [r for r in found if r not in runs]
    return runs


def read_run(run: Path) -> dict:
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{run / 'metrics.json'} is not valid JSON ({type(e).__name__})") from None
    cfg, overrides = {}, []
    if (run / ".hydra" / "config.yaml").is_file():
        cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}
    if (run / ".hydra" / "overrides.yaml").is_file():
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    return {
        "run": str(run),
        "experiment": cfg.get("experiment_name", run.name),
        "overrides": overrides,
        "metrics": metrics,
    }


def label_runs(runs: list[dict]) -> list[str]:
    """The experiment name, plus the overrides that tell runs of one experiment apart."""
    labels = []
    for r in runs:
        same = [o for o in runs if o["experiment"] == r["experiment"]]
        if len(same) == 1:
            labels.append(r["experiment"])
            continue
        common = set.intersection(*(set(o["overrides"]) for o in same))
        own = [o for o in r["overrides"] if o not in common and not o.startswith(("hydra.", "paths."))]
        labels.append(" ".join([r["experiment"], *own]) if own else f"{r['experiment']} ({Path(r['run']).name})")
    return labels


# test keys that describe how a routed model routed (modlab.training.unified), not how well it does:
# kept in each run's row, left out of the compared metrics and the Pareto plots
ROUTING_DIAGNOSTICS = ("test/kept/", "test/kept_dense_min/", "test/capacity/", "test/lm_ppl_causal")


def comparison_rows(paths: list[str]) -> tuple[list[dict], list[str]]:
    """One flat row per run ({label, run, <metrics>}) and the metric keys that are task metrics."""
    runs = [read_run(r) for r in find_runs(paths)]
    rows = [
        {
            "label": lab,
            "run": r["run"],
            **{k: v for k, v in r["metrics"].items() if isinstance(v, (int, float)) or v is None},
        }
        for lab, r in zip(label_runs(runs), runs)
    ]
    metrics = sorted({k for r in rows for k in r if k.startswith("test/") and not k.startswith(ROUTING_DIAGNOSTICS)})
    return rows, metrics


def higher_is_better(metric: str) -> bool:
    return not any(s in metric for s in LOWER_IS_BETTER)
