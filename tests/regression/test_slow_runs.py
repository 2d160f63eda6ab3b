"""Long end-to-end runs (`make test-full`): the acceptance numbers of the foundation issue, and
Lightning's DDP child relaunch through the modlab dispatcher."""

from __future__ import annotations

import json

import pytest
from helpers import only_run_dir, run_modlab


@pytest.mark.slow
def test_showo_dense_reaches_its_accuracy_targets(tmp_path):
    proc = run_modlab("train", "+experiment=showo_dense", out_dir=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert m["test/ref_classifier_acc"] >= 0.95, m
    assert m["test/mmu_acc"] >= 0.90, m
    assert m["test/t2i_acc"] >= 0.70, m


@pytest.mark.slow
def test_ddp_cpu_relaunches_children_through_the_dispatcher(tmp_path):
    proc = run_modlab(
        "train",
        "+experiment=showo_dense",
        "debug=tiny",
        "trainer=ddp_cpu",
        out_dir=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert m["train/steps"] == 4
