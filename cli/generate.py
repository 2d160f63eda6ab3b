"""`modlab generate ckpt_path=...`: T2I samples as a PNG grid, MMU answers as text."""

from __future__ import annotations

from omegaconf import DictConfig

from modlab.cli.runtime import run_dir
from modlab.cli.schema import validate
from modlab.families import family_of_checkpoint


def generate(cfg: DictConfig) -> dict:
    run = validate(cfg)
    spec = family_of_checkpoint(run.ckpt_path)
    spec.require("generate", run.ckpt_path)
    family = spec.family()
    return family.generate(family.load(run.ckpt_path), run, run_dir())
