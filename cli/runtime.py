"""What every command shares: its run directory, and the model family a config or checkpoint names."""

from __future__ import annotations

from pathlib import Path


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def seed_everything(seed: int) -> None:
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)
