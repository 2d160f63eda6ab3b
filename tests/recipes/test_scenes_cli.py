"""Digit scenes through the real commands: train -> eval -> generate on a scenes checkpoint, the
per-type / per-category test metrics, the reproduce table and plot, and `make reproduce --quick`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TINY, only_run_dir, run_modlab

from modlab.data.scenes import PROMPT_CATEGORIES, QUESTION_TYPES

FAST = ("+experiment=scenes_dense", *TINY, "data.codebook_size=16")
SCENE_KEYS = (
    {"test/mmu_acc", "test/t2i_acc", "test/t2i_acc_tokenized", "test/t2i_fid", "test/t2i_fid_tokenized", "test/lm_ppl"}
    | {f"test/mmu_acc/{t}" for t in QUESTION_TYPES}
    | {f"test/t2i_acc/{c}" for c in PROMPT_CATEGORIES}
)


@pytest.fixture(scope="module")
def scenes_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    proc = run_modlab("train", *FAST, "eval.mmu_max_rows=10", "eval.t2i_per_category=2", out_dir=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return only_run_dir(out)


def test_scene_training_reports_every_type_and_category(scenes_run: Path):
    metrics = json.loads((scenes_run / "metrics.json").read_text())
    assert SCENE_KEYS <= set(metrics)
    for k in SCENE_KEYS - {"test/t2i_fid", "test/t2i_fid_tokenized", "test/lm_ppl"}:
        assert 0.0 <= metrics[k] <= 1.0, k
    # 4 steps of a tiny model: far below the scorer's ceiling on real scenes
    assert metrics["test/t2i_acc"] < metrics["test/t2i_acc_tokenized"]
    assert metrics["test/t2i_fid_tokenized"] is None or metrics["test/t2i_fid_tokenized"] >= 0


def test_eval_and_generate_on_a_scenes_checkpoint(scenes_run: Path, tmp_path: Path):
    ckpt = scenes_run / "checkpoints" / "last.ckpt"
    proc = run_modlab("eval", f"ckpt_path={ckpt}", "debug=fast", "eval.t2i_per_category=1", out_dir=tmp_path / "e")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SCENE_KEYS <= set(json.loads((only_run_dir(tmp_path / "e") / "metrics.json").read_text()))
    proc = run_modlab(
        "generate",
        f"ckpt_path={ckpt}",
        "samples_per_prompt=1",
        "mmu_images=5",
        "eval.maskgit_steps=2",
        "eval.max_answer_tokens=3",
        out_dir=tmp_path / "g",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "g")
    assert (run / "t2i_samples.png").stat().st_size > 0
    answers = json.loads((run / "mmu_answers.json").read_text())
    assert [a["type"] for a in answers] == list(QUESTION_TYPES)


def test_reproduce_table_and_plot(scenes_run: Path, tmp_path: Path):
    from modlab.reproduce import Row, write_pareto, write_table

    metrics = json.loads((scenes_run / "metrics.json").read_text())
    routed = {**metrics, "train/flops_per_step": metrics["train/flops_per_step"] / 2}
    rows = [Row("Show-o-like", "dense", scenes_run, metrics), Row("Show-o-like", "MoD", scenes_run, routed, "mod")]
    md, csv_path = write_table(rows, ["Emu3-like (no experiment)"], tmp_path, 10, 60.0)
    text = md.read_text()
    assert "| Show-o-like | MoD |" in text and "Not run: Emu3-like" in text
    header, dense, mod = csv_path.read_text().strip().splitlines()
    columns = ["seed", "steps", "tested step", "GFLOPs/step", "vs dense", "TFLOPs to tested"]
    assert header.split(",")[2:8] == columns
    assert [f"MMU {t}" for t in QUESTION_TYPES] + ["MMU all"] == header.split(",")[8:14]
    assert math.isclose(float(mod.split(",")[6]), 0.5)
    tested = metrics["test/checkpoint_step"] * routed["train/flops_per_step"] / 1e12  # FLOPs to the tested step
    assert math.isclose(float(mod.split(",")[7]), tested)
    assert write_pareto(rows, tmp_path).stat().st_size > 0


def test_reproduce_table_over_seeds_states_which_differences_exceed_the_spread(scenes_run: Path, tmp_path: Path):
    from modlab.reproduce import Row, write_pareto, write_table

    m = json.loads((scenes_run / "metrics.json").read_text())
    rows = [Row("Show-o-like", "dense", scenes_run, m)]
    for seed, (control, mod) in zip((42, 43, 44), ((0.50, 0.60), (0.52, 0.63), (0.49, 0.58))):
        rows.append(Row("Show-o-like", "dense (fine-tuned)", scenes_run, {**m, "test/mmu_acc": control}, seed=seed))
        rows.append(Row("Show-o-like", "MoD", scenes_run, {**m, "test/mmu_acc": mod, "test/t2i_acc": 0.3}, seed=seed))
    md, csv_path = write_table(rows, [], tmp_path, 10, 60.0)
    text = md.read_text()
    assert "seeds 42, 43, 44" in text and "0.603 ± 0.025" in text  # MoD's MMU over the three seeds
    (line,) = [x for x in text.splitlines() if x.startswith("| Show-o-like | MoD | **")]
    assert "**+0.100 ±" in line  # +0.10 on every seed: beyond the spread
    assert len(csv_path.read_text().strip().splitlines()) == 1 + 7  # one row per run and seed
    assert write_pareto(rows, tmp_path).stat().st_size > 0


def test_unknown_data_kind_is_a_one_line_error(tmp_path: Path):
    proc = run_modlab("train", *FAST, "data.kind=scene", out_dir=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "data.kind 'scene'" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_reproduce_quick_writes_the_table(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "modlab.reproduce", "--quick", "--finetune-steps", "4", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"table: {tmp_path / 'results.md'}" in proc.stdout
    lines = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert [line.split(",")[1] for line in lines[1:5]] == ["dense", "dense (fine-tuned)", "MoD", "UniMoD"]
    assert (tmp_path / "pareto.png").is_file()


def test_reproduce_family_option_runs_only_that_family(tmp_path: Path, monkeypatch):
    import modlab.reproduce as reproduce

    ran = []

    def record(fam, out, *args, **kwargs):  # stands in for the training runs; the table gets no rows
        ran.append(fam.name)
        return []

    monkeypatch.setattr(reproduce, "run_family", record)
    reproduce.main(["--family", "Emu3-like", "--skip-analysis", "--out", str(tmp_path)])
    assert ran == ["Emu3-like"]
    assert (tmp_path / "results.md").is_file()
