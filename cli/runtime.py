"""What every command shares: its run directory, and the model family a config or checkpoint names."""

from __future__ import annotations

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
