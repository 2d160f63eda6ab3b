"""Data-parallel training (`trainer=ddp_cpu`: two CPU processes, gloo) against one process at the
same global batch.

The parity run is built so that the two runs must agree to float rounding: a fixed training set
of 16 LM windows (`data.lm_train_rows=16`, no random offsets) and a global batch of 16, so every
step's gradient is over the same 16 rows whatever order each sampler draws them in; the rows are
of one length, so DDP's mean of the two processes' mean losses is the one process's mean. What is
left is summation order (all-reduce vs one sum), ~1e-6 relative after 8 steps: the tolerance
below is 1e-4. If the processes' shards overlapped, or gradients were not averaged, or the test
perplexity were one process's half of the test rows, the runs would differ by percents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_modlab

PARITY = (
    "+experiment=lm_pretrain",
    "debug=tiny",
    "trainer.max_steps=8",
    "trainer.val_check_interval=8",
    "trainer.precision=32-true",
    "data.lm_train_rows=16",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    out = {}
    for name, extra in (("one", ["data.batch_size={lm:16}"]), ("ddp", ["trainer=ddp_cpu", "data.batch_size={lm:8}"])):
        run_dir = root / name
        proc = run_modlab("train", *PARITY, *extra, f"hydra.run.dir={run_dir}", out_dir=root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = run_dir
    return out


def test_two_processes_reach_the_metrics_of_one_at_the_same_global_batch(runs):
    one, ddp = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("one", "ddp"))
    assert one["train/steps"] == ddp["train/steps"] == 8
    assert ddp["test/ppl"] == pytest.approx(one["test/ppl"], rel=1e-4), (one, ddp)


def test_each_process_draws_from_generators_of_its_own_and_the_checkpoint_keeps_both(runs):
    """Seeded alike, rank 1 would draw every random window, caption and mask rank 0 draws; the
    checkpoint keeps each process's generator states so a resumed run continues both."""
    ckpt = torch.load(runs["ddp"] / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    (state,) = [v for k, v in ckpt["callbacks"].items() if "ResumeState" in k]
    rank0, rank1 = state["rng_per_rank"]
    assert not torch.equal(rank0["torch"], rank1["torch"])
    assert torch.equal(rank0["torch"], state["rng"]["torch"])


def test_only_rank_0_writes_the_run_files(runs):
    ddp = runs["ddp"]
    assert (ddp / "metrics.json").is_file() and (ddp / "metrics.csv").is_file()
    # rank 1 writes its own log (Hydra's job log of the relaunched process) and nothing else
    written_by_rank1 = [p.name for p in ddp.iterdir() if "process_1" in p.name]
    assert written_by_rank1 == ["train_ddp_process_1.log"]
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best-step8.ckpt", "last.ckpt"]
