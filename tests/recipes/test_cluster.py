"""Sweeps through Hydra's submitit launcher (hydra/launcher=submitit_local: the local stand-in for
submitit_slurm, with the same job pickling, logs and requeue): each job runs in its own process,
in its own directory of the sweep; a data-parallel job runs one task per device; a failing job is
reported in one line; a job sent the pre-emption signal (USR2) saves a checkpoint at that step and,
requeued by submitit, continues its own run from it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import MODLAB, TINY, assert_one_line_error, run_modlab

LOCAL = ("-m", "hydra/launcher=submitit_local")
QUICK = (*TINY, "trainer.max_steps=2", "callbacks.checkpoint=false", "logger=none")


def _sweep(root: Path, experiment: str) -> Path:
    (sweep,) = root.glob(f"train/{experiment}/multirun_*")
    return sweep


def test_a_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path: Path):
    proc = run_modlab("train", *LOCAL, "+experiment=showo_dense", *QUICK, "seed=1,2", out_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sweep = _sweep(tmp_path, "showo_dense")
    for job, seed in (("0", 1), ("1", 2)):
        assert (sweep / job / "metrics.json").is_file(), sorted(str(p) for p in sweep.rglob("*"))
        assert yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())["seed"] == seed
    # each ran through submitit (its pickled result, in a process of its own), not in this process
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2, sorted(str(p) for p in sweep.rglob("*"))
    launcher = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("LocalLauncher")
    # one device per job (trainer=cpu), so one task per job
    assert [p.name.split("_")[1] for p in sorted(sweep.glob(".submitit/*/*_log.err"))] == ["0", "0"]


def test_a_submitit_local_job_trains_data_parallel_with_one_task_per_device(tmp_path: Path):
    """trainer=ddp_cpu under submitit_local: submitit starts the two processes (as srun does on
    SLURM) and Lightning joins them instead of starting its own (which would rerun submitit's
    command line)."""
    proc = run_modlab("train", *LOCAL, "+experiment=showo_dense", *QUICK, "trainer=ddp_cpu", out_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sweep = _sweep(tmp_path, "showo_dense")
    assert (sweep / "0" / "metrics.json").is_file()
    logs = sorted(sweep.glob(".submitit/*/*_log.err"))
    assert [p.name.split("_")[1] for p in logs] == ["0", "1"], logs
    for rank, log in enumerate(logs):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log.read_text()


def test_a_failing_submitit_job_ends_the_sweep_in_one_line(tmp_path: Path):
    proc = run_modlab("train", *LOCAL, "+experiment=showo_mod", *QUICK, "routing.capacity=1.5", out_dir=tmp_path)
    assert_one_line_error(proc, "1 job(s) of the sweep failed", "job 0 (", "routing.capacity=1.5", "(0, 1]")
    assert "must be in (0, 1]" in (_sweep(tmp_path, "showo_mod") / "0" / "error.txt").read_text()


def _submitit_tasks(folder: Path) -> list[int]:
    """The pids of the processes running submitit jobs whose folder is under `folder`."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "submitit.core._submit" in cmd and str(folder) in cmd:
            pids.append(int(p.name))
    return pids


@pytest.mark.slow  # two job starts and training to a checkpoint: ~45 s on 2 busy cores
def test_a_requeued_job_resumes_its_own_run_from_the_step_of_the_preemption_signal(tmp_path: Path):
    env = {**os.environ, "MODLAB_OUTPUT_DIR": str(tmp_path)}
    env.pop("MODLAB_DEBUG", None)
    args = ["train", *LOCAL, "+experiment=showo_dense", *TINY, "trainer.max_steps=30", "trainer.val_check_interval=30"]
    parent = subprocess.Popen(
        [MODLAB, *args, "callbacks.progress_interval_s=0.05", "logger=none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    reached, deadline = 0, time.time() + 300
    while reached < 4 and time.time() < deadline and parent.poll() is None:
        logs = list(tmp_path.glob("train/showo_dense/multirun_*/0/train.log"))
        text = logs[0].read_text() if logs else ""
        reached = max([int(s) for s in re.findall(r"step (\d+)/30", text)], default=0)
        time.sleep(0.05)
    assert parent.poll() is None and 4 <= reached < 30, (reached, parent.poll())
    sweep = _sweep(tmp_path, "showo_dense")
    (task,) = _submitit_tasks(sweep)
    os.kill(task, signal.SIGUSR2)  # what SLURM sends signal_delay_s before a pre-emption or time-out
    assert parent.wait(timeout=400) == 0, parent.stderr.read()[-3000:]
    job = sweep / "0"
    log = (job / "train.log").read_text()
    # no checkpoint was due before step 30: the one resumed from was written on the signal
    (saved,) = [int(s) for s in re.findall(r"saved \S+last\.ckpt at step (\d+)", log)]
    assert reached <= saved < 30
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'} at step {saved}" in log, log[-2000:]
    assert json.loads((job / "metrics.json").read_text())["train/steps"] == 30
    (err,) = sweep.glob(".submitit/*/*_0_log.err")
    assert "this job is preempted" in err.read_text()


def test_submitit_slurm_asks_for_one_task_per_device_on_each_node_and_requeue(tmp_path: Path, monkeypatch):
    """The sbatch script the plugin's own launch() would submit for `modlab train -m
    hydra/launcher=submitit_slurm trainer=ddp trainer.devices=4 trainer.num_nodes=2 ...` (a stand-in
    srun on PATH; the submission itself is intercepted)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from modlab.cli.app import CONF_DIR

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    overrides = ["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    overrides += ["hydra.launcher.partition=gpu", f"paths.output_dir={tmp_path / 'out'}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    executors = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda self, *a: executors.append(self) or [])
    launcher.launch([["seed=1"]], initial_job_idx=0)
    sbatch = executors[0]._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in (
        "--nodes=2",
        "--ntasks-per-node=4",  # Lightning's SLURMEnvironment: tasks per node = trainer.devices
        "--gpus-per-node=4",
        "--partition=gpu",
        "--time=240",
        "--signal=USR2@120",  # submitit's pre-emption / time-out signal, 2 minutes before the kill
        "--requeue",
    ):
        assert f"#SBATCH {line}\n" in sbatch, sbatch
    assert executors[0]._executor.max_num_timeout == 3

    # a CPU trainer asks for no GPU
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cpu = compose(config_name="train", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert instantiate(cpu.hydra.launcher).params["gpus_per_node"] is None
