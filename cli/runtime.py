"""What every command shares: its run directory, and the model family a config or checkpoint names."""

from __future__ import annotations

import os
from pathlib import Path


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def requeued_run(out: Path) -> str | None:
    """The run directory to continue when this sweep job is starting again in its own directory,
    else None. That happens to a cluster job requeued after a pre-emption or a time-out
    (hydra/launcher=submitit_slurm): submitit runs the same job again, with the same overrides and
    directory. A new job never finds a checkpoint there, since every sweep gets a new directory
    and `hydra.sweep.dir=<a sweep>` is refused (modlab.training.resume.train_argv)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode != RunMode.MULTIRUN or not (out / "checkpoints" / "last.ckpt").is_file():
        return None
    return str(out)


def seed_everything(seed: int) -> None:
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)


def join_submitit_local_tasks() -> None:
    """In a job of hydra/launcher=submitit_local with several tasks (trainer.devices > 1, e.g.
    trainer=ddp_cpu), submitit has started one process per device, as srun does on SLURM (where
    Lightning's SLURMEnvironment reads the ranks). Here the ranks go into torch's env:// variables
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which Lightning's default
    environment reads: it then starts no processes of its own (it would start submitit's command
    line again, which fails)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
