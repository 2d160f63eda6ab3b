"""The real `modlab` command on a tiny random Show-o on Phi (tests/helpers.save_tiny_hf_showo:
Show-o's vocabulary, a byte-level tokenizer, the stand-in image codebook; nothing is downloaded):
analyze redundancy writes a UniMoD plan at a training-FLOPs target -> train with it (the measured
FLOPs ratio is the plan's) -> eval (MMU answers, MaskGIT images) -> generate; and a Phi directory
without Show-o's vocabulary is one line with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, assert_one_line_error, only_run_dir, run_modlab, save_tiny_hf, save_tiny_hf_showo

pytest.importorskip("transformers")

EVAL = (
    "eval.mmu_max_rows=8",
    "eval.t2i_per_digit=1",
    "eval.lm_max_rows=4",
    "eval.maskgit_steps=2",
    "eval.ref_classifier_epochs=1",
)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def showo_dir(tmp_path_factory):
    return save_tiny_hf_showo(tmp_path_factory.mktemp("showo") / "showo")


@pytest.fixture(scope="module")
def plan(showo_dir, tmp_path_factory):
    """`modlab analyze redundancy model=hf_showo`: (its run directory, the plan file)."""
    out = tmp_path_factory.mktemp("plan")
    target = ("analysis.plan.target_flops_ratio=0.9", "analysis.plan.fraction=0.75")
    ok(run_modlab("analyze", "redundancy", "model=hf_showo", f"model.path={showo_dir}", "calibration.n_per_task=4",
                  *target, out_dir=out))  # fmt: skip
    run = only_run_dir(out)
    return run, run / "routing_plan.yaml"


@pytest.fixture(scope="module")
def trained(showo_dir, plan, tmp_path_factory):
    """`modlab train +experiment=hf_showo_unimod` with the plan, at its capacities from step 0."""
    out = tmp_path_factory.mktemp("train")
    ok(run_modlab("train", "+experiment=hf_showo_unimod", f"model.path={showo_dir}", f"routing.plan={plan[1]}",
                  "routing.schedule.kind=constant", *TINY, out_dir=out))  # fmt: skip
    return only_run_dir(out)


def test_redundancy_plans_the_image_tokens_of_t2i_and_mmu_at_the_flops_target(showo_dir, plan):
    from modlab.routing.plan_file import load_plan

    run, path = plan
    p = load_plan(path)
    assert sorted(p.tasks) == ["mmu", "t2i"] and p.n_layer == 4
    assert all(0 not in t.layers for t in p.tasks.values())
    assert p.source["predicted_flops_ratio"] == pytest.approx(0.9, abs=0.02)
    info = json.loads((run / "results.json").read_text())
    assert info["arch"] == "hf_showo"


def test_training_with_the_plan_measures_the_planned_flops_ratio(plan, trained):
    from modlab.routing.plan_file import load_plan

    m = json.loads((trained / "metrics.json").read_text())
    predicted = load_plan(plan[1]).source["predicted_flops_ratio"]
    # the plan counts mean rows; a batched routed call pays for its longest row: a few % apart
    assert m["train/flops_ratio"] == pytest.approx(predicted, rel=0.05)
    assert m["train/flops_ratio"] < 0.97 and m["train/steps"] == 4
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["arch"] == "hf_showo"
    assert ckpt["image_tokenizer"]["kind"] == "hf_vq"
    assert "model.hf.model.layers.2.router.proj.weight" in ckpt["state_dict"]


def test_eval_scores_mmu_answers_and_maskgit_images(trained, tmp_path):
    ok(run_modlab("eval", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", *EVAL, out_dir=tmp_path))
    m = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert 0 <= m["test/mmu_acc"] <= 1 and 0 <= m["test/t2i_acc"] <= 1
    assert m["test/lm_ppl_causal"] == 1.0 and "test/kept/mmu/layer2" in m


def test_generate_writes_maskgit_samples(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    ok(run_modlab("generate", f"ckpt_path={ckpt}", "samples_per_prompt=1", "mmu_images=2", "eval.maskgit_steps=2",
                  out_dir=tmp_path))  # fmt: skip
    run = only_run_dir(tmp_path)
    assert (run / "t2i_samples.png").stat().st_size > 0
    assert len(json.loads((run / "mmu_answers.json").read_text())) == 2


def test_a_phi_directory_without_shows_vocabulary_is_one_line(tmp_path):
    phi = save_tiny_hf(tmp_path / "phi", "phi")
    proc = run_modlab("train", "+experiment=hf_showo_unimod", f"model.path={phi}", *TINY, out_dir=tmp_path / "out")
    assert_one_line_error(proc, str(phi), "showo_vocab.json")
