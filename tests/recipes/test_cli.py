"""The real `modlab` command in subprocesses: train -> eval -> generate, run directories, sweeps,
and every user error as one line on stderr with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import MODLAB, ROUTER_STATE_KEYS, TINY, only_run_dir, run_modlab

FAST = ("+experiment=showo_dense", *TINY)
TEST_KEYS = {"test/mmu_acc", "test/t2i_acc", "test/ref_classifier_acc", "test/lm_ppl"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One real `modlab train` run, shared by the eval / generate / error tests."""
    out = tmp_path_factory.mktemp("runs")
    proc = run_modlab("train", *FAST, out_dir=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return only_run_dir(out)


def test_help_lists_the_commands():
    proc = subprocess.run([MODLAB, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("train", "eval", "generate"):
        assert re.search(rf"^\s*{cmd}\s+\w", proc.stdout, re.M), proc.stdout
    assert subprocess.run([MODLAB], capture_output=True, text=True).stdout == proc.stdout


def test_train_writes_a_complete_run_directory(trained_run: Path):
    run = trained_run
    assert run.parts[-3:-1] == ("train", "showo_dense")
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    assert (run / "train.log").is_file()
    assert (run / "metrics.csv").read_text().count("\n") > 2
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = list((run / "checkpoints").glob("best-step*.ckpt"))
    assert len(best) == 1 and "=" not in best[0].name  # pasteable as ckpt_path= (Hydra grammar)
    metrics = json.loads((run / "metrics.json").read_text())
    assert TEST_KEYS | {"params", "train_seconds"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/mmu_acc", "test/t2i_acc", "test/ref_classifier_acc"))
    assert metrics["test/lm_ppl"] > 1.0 and metrics["params"] > 0


def test_eval_and_generate_on_the_written_checkpoint(trained_run: Path, tmp_path: Path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    proc = run_modlab("eval", f"ckpt_path={ckpt}", "debug=fast", out_dir=tmp_path / "e")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "e")
    assert run.parts[-3:-1] == ("eval", "showo_dense")
    assert TEST_KEYS <= set(json.loads((run / "metrics.json").read_text()))

    proc = run_modlab(
        "generate",
        f"ckpt_path={ckpt}",
        "samples_per_prompt=2",
        "mmu_images=3",
        "eval.maskgit_steps=2",
        out_dir=tmp_path / "g",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "g")
    png = run / "t2i_samples.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    answers = json.loads((run / "mmu_answers.json").read_text())
    assert len(answers) == 3 and {"digit", "answer", "correct"} <= set(answers[0])


def test_two_runs_started_together_get_two_directories(tmp_path: Path):
    import os

    env = {**os.environ, "MODLAB_OUTPUT_DIR": str(tmp_path)}
    args = [MODLAB, "train", *FAST, "callbacks.checkpoint=false"]
    procs = [
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    assert all(p.wait(timeout=600) == 0 for p in procs), [p.stderr.read()[-2000:] for p in procs]
    runs = sorted(p.parent for p in tmp_path.rglob("metrics.json"))
    assert len(runs) == 2 and runs[0].parent == runs[1].parent


def test_hydra_flags_keep_working(tmp_path: Path):
    proc = run_modlab("train", "+experiment=showo_unimod", "--cfg", "job", out_dir=tmp_path)
    assert proc.returncode == 0 and "kind: unimod" in proc.stdout and "experiment_name: showo_unimod" in proc.stdout
    proc = run_modlab("train", "--help", out_dir=tmp_path)
    assert proc.returncode == 0 and "routing: dense, mod, unimod" in proc.stdout, proc.stdout
    custom = tmp_path / "my_run"
    proc = run_modlab(
        "train",
        *FAST,
        "data.image_tokenizer=patch_kmeans",
        "callbacks.checkpoint=false",
        f"hydra.run.dir={custom}",
        out_dir=tmp_path / "unused",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (custom / "metrics.json").is_file() and (custom / ".hydra" / "config.yaml").is_file()
    assert not (tmp_path / "unused").exists()


def test_multirun_sweep_runs_each_value(tmp_path: Path):
    proc = run_modlab("train", "-m", *FAST, "trainer.max_steps=2,3", "callbacks.checkpoint=false", out_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = sorted(tmp_path.rglob("metrics.json"))
    assert [p.parent.name for p in metrics] == ["0", "1"]
    assert [json.loads(p.read_text())["train/steps"] for p in metrics] == [2, 3]


# ---- bad input: tests/recipes/test_bad_input_catalogue.py ------------------------------------


def test_unimod_fine_tunes_from_the_dense_checkpoint(trained_run: Path, tmp_path: Path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    proc = run_modlab("train", "+experiment=showo_unimod", *FAST[1:], f"init_from={ckpt}", out_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert 0 < m["train/flops_ratio"] < 1 and m["train/flops_per_step"] < m["train/flops_per_step_dense"]
    assert 0 <= m["val/router_agreement"] <= 1  # causal routing decision vs top-k
    assert ROUTER_STATE_KEYS <= set(m) and all(0 <= m[k] for k in ROUTER_STATE_KEYS)  # the routers' state


def test_a_run_piped_to_a_file_prints_progress_lines_while_it_trains(tmp_path: Path):
    """stdout is a pipe, not a terminal: progress lines (step, loss, steps/s, time left) appear
    at the interval, in the log file too, and the model summary claims no FLOPs."""
    proc = run_modlab(
        "train",
        *FAST,
        "trainer.max_steps=6",
        "callbacks.progress_interval_s=0.01",
        "callbacks.checkpoint=false",
        out_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = re.findall(r"step (\d+)/6  loss [\d.]+  [\d.]+ steps/s  elapsed \d+:\d\d  left \d+:\d\d", proc.stdout)
    assert len(lines) >= 3 and lines[-1] == "6", proc.stdout[-2000:]
    log = (only_run_dir(tmp_path) / "train.log").read_text()
    assert "step 6/6" in log
    assert "Total FLOPs" not in proc.stdout and "Trainable params" in proc.stdout
