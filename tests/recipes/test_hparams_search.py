"""hparams_search=unimod_capacity: Hydra's Optuna sweeper searches UniMoD's per-task capacities
through the real `modlab train`, which returns the objective (the mean test accuracy, or a penalty
for a trial over the training-FLOPs budget) to the sweeper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import TINY, run_modlab

# the tiny model's trials fall between ~0.72 and ~0.85 of dense FLOPs: a budget of 0.8 leaves some
# trials within it and puts some over it
BUDGET = 0.8


def test_six_optuna_trials_penalise_those_over_the_flops_budget(tmp_path: Path):
    # the study in a database too (optuna 2's storage needs SQLAlchemy 1.4: the optuna extra's pin)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = run_modlab(
        "train",
        "+experiment=showo_unimod",
        "hparams_search=unimod_capacity",
        *TINY,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.sampler.n_startup_trials=3",
        f"hydra.sweeper.storage='{storage}'",
        f"search.max_flops_ratio={BUDGET}",
        "trainer.max_steps=2",
        "callbacks.checkpoint=false",
        "logger=none",
        out_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/showo_unimod/multirun_*")
    trials = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [t.name for t in trials] == ["0", "1", "2", "3", "4", "5"]
    objectives, within_budget = [], []
    for trial in trials:
        m = json.loads((trial / "metrics.json").read_text())
        caps = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())["routing"]["task_capacity"]
        assert len(caps["t2i"]) == 1 and len(caps["mmu"]) == 2  # the sampled capacities reached the run
        within = m["train/flops_ratio"] <= BUDGET
        assert (m["search/over_budget"] == 0) == within
        if within:
            assert m["search/objective"] == pytest.approx((m["test/t2i_acc"] + m["test/mmu_acc"]) / 2)
        else:  # below any trial within the budget (accuracies are >= 0), the further over the lower
            assert m["search/objective"] == pytest.approx(-(m["train/flops_ratio"] / BUDGET - 1))
        objectives.append(m["search/objective"])
        within_budget.append(within)
    assert any(within_budget) and not all(within_budget)  # both cases met (the sampler's seed is fixed)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and results["best_value"] == pytest.approx(max(objectives))
    assert set(results["best_params"]) == {f"routing.task_capacity.{k}" for k in ("t2i.0", "mmu.0", "mmu.1")}
    import optuna

    study = optuna.load_study(study_name="unimod_capacity", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert [t.value for t in study.trials] == pytest.approx(objectives)


def test_a_search_whose_trials_all_fail_ends_in_one_line(tmp_path: Path):
    """A metric the runs do not report: the trial keeps its metrics.json and records the error, and
    the search ends with the job errors in one line (not Optuna's "no trials are completed")."""
    proc = run_modlab(
        "train",
        "+experiment=showo_unimod",
        "hparams_search=unimod_capacity",
        *TINY,
        "hydra.sweeper.n_trials=1",
        "search.metrics=[test/nope]",
        "trainer.max_steps=2",
        "callbacks.checkpoint=false",
        "logger=none",
        out_dir=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("modlab: error: 1 job(s) of the sweep failed") and "no trial of the search" in last
    assert "search.metrics ['test/nope'] are not among the run's metrics" in last
    (trial,) = tmp_path.glob("train/showo_unimod/multirun_*/0")
    assert (trial / "metrics.json").is_file() and "test/nope" in (trial / "error.txt").read_text()
