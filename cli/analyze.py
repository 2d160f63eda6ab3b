"""`modlab analyze <job> ckpt_path=...` (or `model=hf_causal_lm model.path=DIR`): one analysis.

The job (modlab.analysis.jobs) runs on the calibration rows the model's family provides and
returns plain data; modlab.analysis.report writes results.json, the CSV tables, the PNG plots
(and the routing plan of `redundancy`) into the run directory and prints the tables.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from omegaconf import DictConfig

from modlab.analysis.jobs import JOBS
from modlab.cli.runtime import run_dir
from modlab.cli.schema import validate
from modlab.errors import CheckpointError, ConfigError
from modlab.families import family_of_checkpoint, get_family


def analyze(cfg: DictConfig) -> dict:
    run = validate(cfg)
    job = JOBS[run.analysis.job]
    if run.model:  # a model that needs no checkpoint (a Hugging Face directory)
        spec, what = get_family(run.model.arch), run.model.path
    else:
        spec, what = family_of_checkpoint(run.ckpt_path), run.ckpt_path
    if job.name not in spec.analyses:
        families = ", ".join(job.families())
        raise CheckpointError(
            f"analyze {job.name} cannot analyse a '{spec.name}' model ({what}); it analyses: {families}"
        )
    family = spec.family()
    loaded = family.load_pretrained(run.model) if run.model else family.load_for_analysis(run.ckpt_path)
    import torch

    from modlab.analysis.report import Progress, write_report
    from modlab.training.trainer import resolve_precision

    torch.manual_seed(run.seed)
    start = time.perf_counter()
    target = family.analysis_target(loaded, run.calibration, run.seed)
    precision = resolve_precision(run.precision, "cpu")
    with Progress() as progress, torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        result = job.run(run, target, progress)
    rows = {task: sum(len(batch["ids"]) for batch in parts) for task, parts in target.batches.items()}
    header = {
        "job": job.name,
        "ckpt_path": run.ckpt_path,
        "arch": spec.name,
        "calibration": {**asdict(run.calibration), "tasks": list(target.batches), "rows": rows},
        "analysis": asdict(run.analysis),
        "precision": precision,
        **({"model_path": run.model.path} if run.model else {}),
    }
    summary = write_report(result, run_dir(), header, time.perf_counter() - start)
    if result.error:
        raise ConfigError(f"{result.error}; the analysis' other results are in {run_dir()}/results.json")
    return summary
