"""`modlab eval ckpt_path=...`: the test metrics of a checkpoint, written to metrics.json."""

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
    module = family.load(run.ckpt_path)
    seed_everything(run.seed)
    out = run_dir()
    return finish_run("modlab eval", family.evaluate(module, run, out), out)
