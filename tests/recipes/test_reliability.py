"""Reliability of the real `modlab train` in subprocesses: checkpoints that survive a kill mid-write,
the non-finite guard, exact resume after SIGKILL, a checkpoint on SLURM's pre-emption signal, and
sweeps that survive a failing job."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import MODLAB, TINY, assert_one_line_error, run_modlab

from modlab.training.checkpoint import load_checkpoint_file
from modlab.training.checkpoint_io import PAUSE_ENV, AtomicCheckpointIO
from modlab.training.guards import INJECT_ENV

EXACT = ("trainer.precision=32-true", "trainer.deterministic=true")


def _start(args, out: Path, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, "MODLAB_OUTPUT_DIR": str(out), **(env or {})}
    full.pop("MODLAB_DEBUG", None)
    return subprocess.Popen(
        [MODLAB, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full, start_new_session=True
    )


def _step(ckpt: Path) -> int | None:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # not written yet, or being replaced
        return None


def assert_error_after_training(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A run that fails once training has begun (Lightning has logged to stderr by then): exit 2,
    no traceback, and its last stderr line the one-line error."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("modlab: error: ") and all(n in last for n in needles), last


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("train_seconds")
    return m


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one(tmp_path: Path):
    run = tmp_path / "run"
    args = ["train", "+experiment=showo_dense", *TINY, "callbacks.checkpoint_every_n_steps=1", f"hydra.run.dir={run}"]
    proc = _start(args, tmp_path, env={PAUSE_ENV: "60"})
    ckpts = run / "checkpoints"
    deadline = time.time() + 240
    while not list(ckpts.glob("*.writing")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    writing = list(ckpts.glob("*.writing"))
    assert writing, proc.stderr.read() if proc.poll() is not None else "no checkpoint write was paused"
    before = (ckpts / "last.ckpt").read_bytes()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    half = Path(str(writing[0]).removesuffix(".writing"))
    assert half.is_file() and half.stat().st_size < len(before)  # it really died mid-write
    with pytest.raises(RuntimeError):
        torch.load(half, weights_only=True)
    assert (ckpts / "last.ckpt").read_bytes() == before  # the previous checkpoint, untouched
    ckpt = load_checkpoint_file(str(ckpts / "last.ckpt"))
    assert ckpt["global_step"] >= 1 and "optimizer_states" in ckpt
    # a truncated checkpoint names its path and why, in one line
    from modlab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="truncated") as e:
        AtomicCheckpointIO().load_checkpoint(half)
    assert str(half) in str(e.value) and "\n" not in str(e.value)


def test_atomic_save_replaces_whole_files(tmp_path: Path):
    io = AtomicCheckpointIO()
    target = tmp_path / "c" / "last.ckpt"
    for v in range(2):
        io.save_checkpoint({"v": torch.full((3,), float(v))}, target)
        assert torch.equal(io.load_checkpoint(target)["v"], torch.full((3,), float(v)))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary left


def test_a_diverging_run_stops_in_one_line_and_keeps_a_finite_checkpoint(tmp_path: Path):
    run = tmp_path / "run"
    proc = run_modlab(
        "train",
        "+experiment=showo_dense",
        *TINY,
        "objective.lr=1e30",
        "callbacks.checkpoint_every_n_steps=1",
        f"hydra.run.dir={run}",
        out_dir=tmp_path,
    )
    assert_error_after_training(proc, "training stopped at step", "NaN")
    ckpt = load_checkpoint_file(str(run / "checkpoints" / "last.ckpt"))
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_a_nan_router_logit_names_its_step_and_layer(tmp_path: Path):
    proc = run_modlab("train", "+experiment=showo_mod", *TINY, out_dir=tmp_path, env={INJECT_ENV: "router@3"})
    assert_error_after_training(proc, "training stopped at step 3", "router logit", "layer 1")


def test_skip_nonfinite_skips_and_counts_the_steps(tmp_path: Path):
    proc = run_modlab(
        "train",
        "+experiment=showo_mod",
        *TINY,
        "trainer.skip_nonfinite=true",
        "callbacks.checkpoint=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        out_dir=tmp_path,
        env={INJECT_ENV: "loss@1,router@2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["train/skipped_steps"] == 2 and m["train/steps"] == 4


def test_a_skipped_step_leaves_the_lr_schedule_where_it_was(tmp_path: Path):
    run = tmp_path / "run"
    proc = run_modlab(
        "train",
        "+experiment=showo_dense",
        *TINY,
        "trainer.skip_nonfinite=true",
        f"hydra.run.dir={run}",
        out_dir=tmp_path,
        env={INJECT_ENV: "loss@1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # LearningRateMonitor logs the LR each step will use: step 2 uses step 1's, which was skipped
    lr = {int(r["step"]): float(r["lr-AdamW/pg1"]) for r in _csv(run) if r["lr-AdamW/pg1"]}
    assert lr[2] == lr[1] and lr[1] != lr[0] and lr[3] != lr[2], lr  # warm-up: it moves on every other step
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["lr_schedulers"][0]["last_epoch"] == 3


def _csv(run: Path) -> list[dict]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_metrics(tmp_path: Path):
    """The acceptance test: uninterrupted vs SIGKILL + resume=, every key of metrics.json but timings."""
    args = [
        "train",
        "+experiment=showo_dense",
        *TINY,
        *EXACT,
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        "callbacks.checkpoint_every_n_steps=3",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    uninterrupted = _start([*args, f"hydra.run.dir={full}"], tmp_path)
    victim = _start([*args, f"hydra.run.dir={killed}"], tmp_path)
    last, step, deadline = killed / "checkpoints" / "last.ckpt", None, time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        step = _step(last) if last.is_file() else None
        if step is not None and 12 <= step < 30:
            os.killpg(victim.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    assert victim.wait(timeout=60) == -signal.SIGKILL, f"not killed in time (last checkpoint at step {step})"
    assert not (killed / "metrics.json").exists()
    resumed_at = _step(last)  # the checkpoint the kill left (possibly one written after the poll)
    assert resumed_at is not None and 12 <= resumed_at < 30
    assert uninterrupted.wait(timeout=400) == 0, uninterrupted.stderr.read()[-3000:]

    proc = run_modlab("train", f"resume={killed}", out_dir=tmp_path / "unused")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"at step {resumed_at}" in (killed / "train.log").read_text()
    assert _metrics(killed) == _metrics(full)
    # every step logged once, as in the uninterrupted run (the rows the killed run logged after its
    # checkpoint are logged again by the resumed run, those before it are kept)
    assert (killed / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    assert not (tmp_path / "unused").exists()


def test_slurms_preemption_signal_saves_a_checkpoint_at_its_step_and_the_run_resumes_from_it(tmp_path: Path):
    """USR2 (what SLURM sends before a pre-emption or time-out kill) in the middle of training: the
    step it arrives in is checkpointed (no other checkpoint is due before step 30), the process
    ends as USR2 ends it, and the resumed run finishes with an uninterrupted run's metrics."""
    args = [
        "train",
        "+experiment=showo_dense",
        *TINY,
        *EXACT,
        "trainer.max_steps=30",
        "trainer.val_check_interval=30",
        "callbacks.progress_interval_s=0.05",
    ]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    uninterrupted = _start([*args, f"hydra.run.dir={full}"], tmp_path)
    victim = _start([*args, f"hydra.run.dir={stopped}"], tmp_path)
    reached, deadline = 0, time.time() + 300
    while reached < 3 and time.time() < deadline and victim.poll() is None:
        log = (stopped / "train.log").read_text() if (stopped / "train.log").is_file() else ""
        reached = max([int(s) for s in re.findall(r"step (\d+)/30", log)], default=0)
        time.sleep(0.05)
    assert 3 <= reached < 30, (reached, victim.poll())
    os.kill(victim.pid, signal.SIGUSR2)
    assert victim.wait(timeout=120) == -signal.SIGUSR2, victim.stderr.read()[-3000:]
    last = stopped / "checkpoints" / "last.ckpt"
    saved = _step(last)
    assert saved is not None and reached <= saved < 30, (reached, saved)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert f"saved {last} at step {saved}" in (stopped / "train.log").read_text()
    assert not (stopped / "metrics.json").exists()
    assert uninterrupted.wait(timeout=400) == 0, uninterrupted.stderr.read()[-3000:]

    proc = run_modlab("train", f"resume={stopped}", out_dir=tmp_path / "unused")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"resuming from {last} at step {saved}" in (stopped / "train.log").read_text()
    assert _metrics(stopped) == _metrics(full)
    assert (stopped / "metrics.csv").read_text() == (full / "metrics.csv").read_text()


def test_a_new_run_never_overwrites_an_existing_one(tmp_path: Path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("mine: 1\n")
    proc = run_modlab("train", "+experiment=showo_dense", *TINY, f"hydra.run.dir={run}", out_dir=tmp_path)
    assert_one_line_error(proc, "already holds a run", "resume=")
    assert (run / ".hydra" / "config.yaml").read_text() == "mine: 1\n"
    assert sorted(p.name for p in run.rglob("*")) == [".hydra", "config.yaml"]


def test_a_sweep_with_a_failing_job_finishes_the_others_and_compare_lists_it(tmp_path: Path):
    proc = run_modlab(
        "train",
        "-m",
        "+experiment=showo_mod",
        *TINY,
        "routing.capacity=1.5,0.5",
        "callbacks.checkpoint=false",
        out_dir=tmp_path,
    )
    assert_error_after_training(proc, "1 job(s) of the sweep failed", "job 0 (", "routing.capacity=1.5", "(0, 1]")
    sweep = next(tmp_path.glob("train/showo_mod/multirun_*"))
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "0" / "metrics.json").exists()
    assert "routing.capacity must be in (0, 1]" in (sweep / "0" / "error.txt").read_text()
    proc = run_modlab("compare", str(sweep), out_dir=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "c").rglob("results.json")).read_text())
    assert [r["run"] for r in results["runs"]] == [str(sweep / "1")]
    assert results["failed"] == [{"run": str(sweep / "0"), "error": (sweep / "0" / "error.txt").read_text().strip()}]
    assert "failed" in proc.stdout and "must be in (0, 1]" in proc.stdout
