from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODLAB = str(Path(sys.executable).parent / "modlab")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_modlab(*args: str, out_dir: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `modlab` console script with run directories under `out_dir`."""
    full_env = {**os.environ, "MODLAB_OUTPUT_DIR": str(out_dir), "COLUMNS": "120", **(env or {})}
    full_env.pop("MODLAB_DEBUG", None)
    return subprocess.run([MODLAB, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def only_run_dir(root: Path) -> Path:
    """The single run directory (the one holding .hydra/) under root."""
    dirs = sorted(p.parent for p in root.rglob(".hydra"))
    assert len(dirs) == 1, dirs
    return dirs[0]
