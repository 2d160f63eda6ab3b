"""Which weights `modlab train` tests, and that `make reproduce` tests every fine-tune at the end
of its budget: Lightning validates (and checkpoints) only every val_check_interval steps, so the
best-val/loss checkpoint of a 5-step run validated every 2 steps is its step-4 one; with
`callbacks.test_checkpoint=last` the test runs the weights after step 5, metrics.json says which
step was tested, and last.ckpt holds those weights (`modlab eval` of it gives the same test)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import TINY, only_run_dir, run_modlab

FAST = ("+experiment=showo_dense", *TINY, "trainer.max_steps=5")  # validated at steps 2 and 4


def step_of(ckpt: Path) -> int:
    return int(torch.load(ckpt, weights_only=True, mmap=True)["global_step"])


def test_the_last_weights_are_tested_and_last_ckpt_holds_them(tmp_path: Path):
    proc = run_modlab("train", *FAST, "callbacks.test_checkpoint=last", out_dir=tmp_path / "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "last")
    m = json.loads((run / "metrics.json").read_text())
    assert m["train/steps"] == 5 and m["test/checkpoint_step"] == 5  # not step 4, the last validation
    assert step_of(run / "checkpoints" / "last.ckpt") == 5
    proc = run_modlab("eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "debug=fast", out_dir=tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    e = json.loads((only_run_dir(tmp_path / "eval") / "metrics.json").read_text())
    assert e["test/lm_ppl"] == m["test/lm_ppl"]  # the tested weights are last.ckpt's

    proc = run_modlab("train", *FAST, out_dir=tmp_path / "best")  # default: the best validation
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "best")
    m = json.loads((run / "metrics.json").read_text())
    (best,) = (run / "checkpoints").glob("best-step*.ckpt")
    assert m["test/checkpoint_step"] == step_of(best) in (2, 4)


def test_reproduce_tests_every_run_at_the_end_of_its_budget(tmp_path: Path, monkeypatch):
    """The composed `modlab train` commands of one family (the runs themselves stand in by
    writing their metrics.json: the training is what the test above checks)."""
    import modlab.reproduce as reproduce

    commands = []

    def run(args, run_dir):
        commands.append(args)
        run_dir.mkdir(parents=True, exist_ok=True)
        per_step = 1e9 if "dry_run=true" not in args else 0.8e9
        (run_dir / "metrics.json").write_text(json.dumps({"train/flops_per_step": per_step}))

    monkeypatch.setattr(reproduce, "run_modlab", run)
    reproduce.run_family(reproduce.FAMILIES[0], tmp_path, 297, [], skip_analysis=True)
    trained = [c for c in commands if c[0] == "train" and "dry_run=true" not in c]
    assert len(trained) == 4  # dense, its fine-tuned control, MoD, UniMoD
    assert all("callbacks.test_checkpoint=last" in c for c in trained)
