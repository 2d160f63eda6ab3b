"""`logger=<name>`: each logger of an optional extra (TensorBoard, MLflow, Weights & Biases) writes
its own files into the run directory of a real tiny `modlab train`, and contacts no server."""

from __future__ import annotations

from pathlib import Path

from helpers import TINY, run_modlab

FAST = ("+experiment=showo_dense", *TINY, "callbacks.checkpoint=false")


def _train(tmp_path: Path, logger: str, env: dict | None = None) -> Path:
    run = tmp_path / "run"
    proc = run_modlab("train", *FAST, f"logger={logger}", f"hydra.run.dir={run}", out_dir=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "metrics.json").is_file()
    return run


def test_logger_tensorboard_writes_its_event_files(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path, "tensorboard")
    events = list(run.glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in run.iterdir())
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "val/loss" in acc.Tags()["scalars"]


def test_logger_mlflow_writes_a_local_file_store(tmp_path: Path):
    run = _train(tmp_path, "mlflow")
    # mlruns/<experiment id>/<run id>/metrics/<key>: one "<timestamp> <value> <step>" line per logged value
    runs = [m.parent for m in (run / "mlruns").glob("*/*/meta.yaml")]
    assert len(runs) == 1, sorted(str(p) for p in (run / "mlruns").rglob("*"))
    metrics = runs[0] / "metrics"
    assert (metrics / "train" / "loss").is_file() and (metrics / "val" / "loss").is_file()
    assert (metrics / "test" / "mmu_acc").is_file()
    assert len((metrics / "train" / "loss").read_text().splitlines()) == 4  # debug=tiny: 4 steps, each logged
    assert "showo_dense" in (runs[0].parent / "meta.yaml").read_text()  # the experiment is modlab's


def test_logger_wandb_writes_an_offline_run(tmp_path: Path):
    # WANDB_MODE=online in the environment must not make it log in (no network, no API key here)
    run = _train(tmp_path, "wandb", env={"WANDB_MODE": "online", "WANDB_API_KEY": ""})
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(str(p) for p in run.rglob("*"))
    data = list(runs[0].glob("*.wandb"))
    assert data and data[0].stat().st_size > 0
