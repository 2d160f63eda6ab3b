"""`modlab train`: fit, test the best checkpoint, write metrics.json and a summary table
(`dry_run=true`: build the model and data, measure a step's training FLOPs, train nothing)."""

from __future__ import annotations

from omegaconf import DictConfig

from modlab.cli.runtime import requeued_run, run_dir
from modlab.cli.schema import validate
from modlab.families import get_family
from modlab.outputs import finish_run


def train(cfg: DictConfig) -> dict | float:
    """The run's metrics; with `search.metrics` set (hparams_search=...), the objective value a
    Hydra sweeper optimises (Optuna reads the task function's return value)."""
    run = validate(cfg)
    spec = get_family(run.model.arch)
    spec.check_training(run)
    out = run_dir()
    if run.resume is None and not run.dry_run:
        run.resume = requeued_run(out)  # a requeued cluster job continues where it stopped
    if run.dry_run:
        from modlab.cli.runtime import seed_everything

        seed_everything(run.seed)
        return finish_run(f"modlab train {run.experiment_name} (dry run)", spec.family().dry_run(run), out)
    from modlab.training.trainer import fit_and_test

    metrics, writes_files = fit_and_test(spec.family(), run, out)
    objective = None
    try:
        if run.search.metrics:
            objective, over = run.search.objective(metrics)
            metrics.update({"search/objective": objective, "search/over_budget": over})
    finally:  # a search metric named wrongly still leaves the run's metrics.json
        if writes_files:  # rank 0 only
            finish_run(f"modlab train {run.experiment_name}", metrics, out)
    return metrics if objective is None else objective
