"""`modlab compare DIR [DIR...]`: metrics and training FLOPs of several runs (or every run of a
sweep directory) in one table, compare.csv, results.json and a Pareto plot (training FLOPs per
step vs each task metric); runs that differ only in their seed also as mean ± std over seeds
(compare_seeds.csv, error bars); failed jobs of a sweep listed (modlab.analysis.compare)."""

from __future__ import annotations

from omegaconf import DictConfig

from modlab.analysis.compare import write_comparison
from modlab.cli.runtime import run_dir
from modlab.cli.schema import validate


def compare(cfg: DictConfig) -> dict:
    return write_comparison(validate(cfg).runs, run_dir())
