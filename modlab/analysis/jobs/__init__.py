"""The `modlab analyze` jobs, registered once: the help, the dispatcher, the config group
(conf/analysis/<name>.yaml, checked against this table by a test) and the families' supported
analyses (modlab.families) all read this table. Cheap to import: no torch until a job runs.

A job is `run(cfg, target, progress) -> JobResult` (modlab.analysis.report): it computes plain
data; the one report writer turns it into the rich tables, results.json, CSVs and PNGs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from modlab.registry import families_for_analysis


@dataclass(frozen=True)
class AnalysisJob:
    name: str
    summary: str
    implementation: str  # "module:function"
    settings: tuple[str, ...] = ()  # the sections of AnalysisConfig it reads (analysis.<section>.*)

    def run(self, cfg, target, progress):
        module, _, attr = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attr)(cfg, target, progress)

    def families(self) -> list[str]:
        return families_for_analysis(self.name)


JOBS: dict[str, AnalysisJob] = {
    j.name: j
    for j in (
        AnalysisJob(
            "attention",
            "attention to text vs image tokens per layer, task and query modality; mean attention maps",
            "modlab.analysis.jobs.attention_job:run",
        ),
        AnalysisJob(
            "importance",
            "drop-one-layer task losses and metrics; LLM-Drop 1 - cos importance of every sublayer",
            "modlab.analysis.jobs.importance_job:run",
            ("importance",),
        ),
        AnalysisJob(
            "redundancy",
            "ARank (rank of Q_h K_h^T) per layer and task; writes a routing plan (routing.plan=<file>)",
            "modlab.analysis.jobs.redundancy_job:run",
            ("arank", "plan"),
        ),
        AnalysisJob(
            "interactions",
            "single-task vs joint training; a shared router with a joint budget vs task routers",
            "modlab.analysis.jobs.interactions_job:run",
            ("interactions",),
        ),
    )
}
