from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, only_run_dir, run_modlab


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lm_pretrained(tmp_path_factory) -> Path:
    """A tiny pretrained LM checkpoint written by the real `modlab train +experiment=lm_pretrain`."""
    out = tmp_path_factory.mktemp("lm_pretrain")
    proc = run_modlab("train", "+experiment=lm_pretrain", *TINY, out_dir=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(out)
    assert run.parts[-3:-1] == ("train", "lm_pretrain")
    m = json.loads((run / "metrics.json").read_text())
    assert 1.0 < m["test/ppl"] < 300 and m["params"] == m["params_trained"]
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def real_lm() -> Path:
    """The real model's directory (tests marked `real`); they skip until `make real-lm` made it."""
    from helpers import real_lm_dir

    directory = real_lm_dir()
    if directory is None:
        from modlab.real_lm import real_lm_dir as made_at

        pytest.skip(f"the real model is not made ({made_at()}): run `make real-lm`")
    return directory
