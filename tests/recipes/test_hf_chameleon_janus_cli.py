"""The real `modlab` command on tiny random Hugging Face Chameleon and Janus models saved to a
directory (nothing is downloaded): analyze importance | redundancy -> a UniMoD routing plan ->
fine-tune with it for a few steps -> `modlab eval` on the written checkpoint (MMU answers, T2I
images, LM perplexity under causal routing, kept fractions). Random weights: the accuracies say
nothing; the plumbing, the routing and the FLOPs accounting are what is checked."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import only_run_dir, run_modlab, save_tiny_hf_unified

pytest.importorskip("transformers")

FAST = ("debug=fast", "callbacks.progress_bar=false")
SMALL = ("data.batch_size={t2i: 2, mmu: 2, lm: 1}", "data.eval_batch_size=8")
# T2I scoring needs a VQ decoder (Chameleon has none in transformers)
T2I_KEYS = {"chameleon": {"test/t2i_skipped"}, "janus": {"test/t2i_acc", "test/ref_classifier_acc_tokenized"}}


def modlab_ok(*args, out_dir):
    proc = run_modlab(*args, out_dir=out_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("family", ["chameleon", "janus"])
def test_analyze_plan_fine_tune_eval(family, tmp_path):
    model_dir = save_tiny_hf_unified(tmp_path / family, family)
    model = (f"model=hf_{family}", f"model.path={model_dir}", "calibration.n_per_task=8")
    modlab_ok("analyze", "importance", *model, out_dir=tmp_path / "i")  # every layer dropped in turn
    results = json.loads((only_run_dir(tmp_path / "i") / "results.json").read_text())
    assert results["results"]
    modlab_ok("analyze", "redundancy", *model, "analysis.plan.target_flops_ratio=0.9", out_dir=tmp_path / "r")
    plan_path = only_run_dir(tmp_path / "r") / "routing_plan.yaml"
    predicted = yaml.safe_load(plan_path.read_text())["source"]["predicted_flops_ratio"]
    assert predicted == pytest.approx(0.9, abs=0.02)

    modlab_ok(
        "train",
        f"+experiment=hf_{family}_unimod",
        f"model.path={model_dir}",
        f"routing.plan={plan_path}",
        "routing.schedule.kind=constant",
        "routing.schedule.anneal_steps=0",
        *FAST,
        *SMALL,
        out_dir=tmp_path / "t",
    )
    run = only_run_dir(tmp_path / "t")
    assert run.parts[-3:-1] == ("train", f"hf_{family}_unimod")
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["train/steps"] == 4 and trained["vq_params"] > 0
    # the measured ratio of the training steps is the plan's prediction (Janus: its vision encoder counted in both)
    assert trained["train/flops_ratio"] == pytest.approx(predicted, abs=0.02)

    modlab_ok("eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "debug=fast", out_dir=tmp_path / "e")
    m = json.loads((only_run_dir(tmp_path / "e") / "metrics.json").read_text())
    assert {"test/mmu_acc", "test/lm_ppl", "test/ref_classifier_acc"} | T2I_KEYS[family] <= set(m), sorted(m)
    assert ("test/t2i_acc" in m) == (family == "janus")
    assert any(k.startswith("test/kept/t2i/") for k in m) and any(k.startswith("test/kept/mmu/") for k in m)
    assert 0.0 <= m["test/mmu_acc"] <= 1.0 and m["test/lm_ppl"] > 1.0

    # generate: MMU answers, and T2I samples decoded by the VQ decoder; Chameleon's VQ has none in
    # transformers, so it writes the drawn codes instead
    ckpt = run / "checkpoints" / "last.ckpt"
    modlab_ok("generate", f"ckpt_path={ckpt}", "samples_per_prompt=1", "mmu_images=2", out_dir=tmp_path / "g")
    gen = only_run_dir(tmp_path / "g")
    assert len(json.loads((gen / "mmu_answers.json").read_text())) == 2
    if family == "janus":
        assert (gen / "t2i_samples.png").stat().st_size > 0
    else:
        codes = json.loads((gen / "t2i_codes.json").read_text())["codes"]
        assert len(codes) == 10 and not (gen / "t2i_samples.png").exists()
