"""`modlab eval ckpt_path=...`: the test metrics of a checkpoint, written to metrics.json; with
`harness.tasks=[...]` also lm-evaluation-harness scores of its base and routed model side by side."""

from __future__ import annotations

from omegaconf import DictConfig

from modlab.cli.runtime import run_dir, seed_everything
from modlab.cli.schema import validate
from modlab.families import family_of_checkpoint
from modlab.outputs import finish_run


def evaluate(cfg: DictConfig) -> dict:
    run = validate(cfg)
    spec = family_of_checkpoint(run.ckpt_path)
    spec.require("eval", run.ckpt_path)
    family = spec.family()
    harness_tasks = None
    if run.harness.tasks:  # an unknown task fails before the model is loaded
        from modlab.evaluation.harness import task_manager

        harness_tasks = task_manager(run.harness)
    module = family.load(run.ckpt_path)
    seed_everything(run.seed)
    out = run_dir()
    metrics = family.evaluate(module, run, out)
    if run.harness.tasks:
        from modlab.evaluation.harness import print_harness_table, run_harness

        variants, tokenizer, device = family.harness_variants(module)
        scores = run_harness(variants, tokenizer, run.harness, harness_tasks, device)
        metrics.update(scores)
        print_harness_table(scores)
    return finish_run("modlab eval", metrics, out)
