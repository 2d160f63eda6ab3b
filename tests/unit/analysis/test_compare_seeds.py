"""`modlab compare` groups runs that differ only in their seed: mean, sample std and the 95 %
t-interval per metric (the numbers checked by hand), and the CLI writes compare_seeds.csv."""

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import only_run_dir, run_modlab

from modlab.analysis.compare import comparison_rows, seed_groups
from modlab.analysis.stats import paired_difference, spread


def write_run(root: Path, name: str, experiment: str, seed: int, overrides: list[str], metrics: dict) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"experiment_name": experiment, "seed": seed}))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}", f"hydra.run.dir={run}"]))
    (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def seeded_runs(tmp_path: Path) -> Path:
    for seed, acc in zip((1, 2, 3), (0.50, 0.60, 0.70)):
        write_run(
            tmp_path,
            f"mod_{seed}",
            "scenes_mod",
            seed,
            ["init_from=x.ckpt"],
            {"test/mmu_acc": acc, "train/flops_per_step": 2e9},
        )
    for seed, acc in zip((1, 2, 3), (0.55, 0.66, 0.71)):
        write_run(
            tmp_path,
            f"dense_{seed}",
            "scenes_dense",
            seed,
            ["init_from=x.ckpt"],
            {"test/mmu_acc": acc, "train/flops_per_step": 4e9},
        )
    return tmp_path


def test_spread_is_the_sample_std_and_the_t_interval():
    s = spread([0.5, 0.6, 0.7])
    assert s["n"] == 3 and math.isclose(s["mean"], 0.6) and math.isclose(s["std"], 0.1)
    assert math.isclose(s["ci95"], 4.302652729911275 * 0.1 / math.sqrt(3), rel_tol=1e-9)
    assert spread([0.4])["ci95"] is None and spread([0.4])["std"] == 0.0


def test_runs_that_differ_only_in_seed_form_one_group(seeded_runs: Path):
    rows, metrics = comparison_rows([str(seeded_runs)])
    assert metrics == ["test/mmu_acc"] and len(rows) == 6
    groups = {g["label"]: g for g in seed_groups(rows, ["test/mmu_acc", "train/flops_per_step"])}
    assert set(groups) == {"scenes_mod", "scenes_dense"}
    mod = groups["scenes_mod"]
    assert mod["n"] == 3 and mod["seeds"] == [1, 2, 3]
    assert math.isclose(mod["test/mmu_acc"], 0.6) and math.isclose(mod["test/mmu_acc_std"], 0.1)
    assert mod["train/flops_per_step_std"] == 0.0


def test_paired_difference_exceeds_the_spread_only_when_its_interval_excludes_zero():
    rows = [
        {"arm": a, "seed": s, "v": v}
        for a, vals in (("x", (1.0, 2.0, 3.0)), ("y", (0.9, 1.9, 2.9)))
        for s, v in zip((1, 2, 3), vals)
    ]
    (d,) = paired_difference(rows, "arm", "x", "y", (), "v")
    assert math.isclose(d["mean"], 0.1) and d["exceeds_spread"]  # the same +0.1 on every seed
    rows[0]["v"] = 0.0  # one seed goes the other way: the interval covers 0
    (d,) = paired_difference(rows, "arm", "x", "y", (), "v")
    assert not d["exceeds_spread"]


def test_compare_cli_writes_the_seed_groups(seeded_runs: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    proc = run_modlab("compare", str(seeded_runs), out_dir=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = only_run_dir(out)
    assert (run / "compare_seeds.csv").read_text().count("\n") == 3  # header + two groups
    results = json.loads((run / "results.json").read_text())
    assert {g["label"]: g["n"] for g in results["seed_groups"]} == {"scenes_mod": 3, "scenes_dense": 3}
    assert "differ only in their seed" in proc.stdout and (run / "pareto.png").is_file()
