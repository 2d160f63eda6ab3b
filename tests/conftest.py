from __future__ import annotations

import json
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


# the fastest tiny causal LM: 4 layers x d = 32, a few steps of lm_pretrain
TINY_LM = ("debug=fast", "model.d_model=32", "model.n_layer=4", "model.n_head=2", "callbacks.progress_bar=false")


@pytest.fixture(scope="session")
def lm_pretrained(tmp_path_factory) -> Path:
    """A tiny pretrained LM checkpoint written by the real `modlab train +experiment=lm_pretrain`."""
    out = tmp_path_factory.mktemp("lm_pretrain")
    proc = run_modlab("train", "+experiment=lm_pretrain", *TINY_LM, out_dir=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(out)
    assert run.parts[-3:-1] == ("train", "lm_pretrain")
    m = json.loads((run / "metrics.json").read_text())
    assert 1.0 < m["test/ppl"] < 300 and m["params"] == m["params_trained"]
    return run / "checkpoints" / "last.ckpt"
