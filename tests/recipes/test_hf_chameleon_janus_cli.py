"""The real `modlab` command on tiny random Hugging Face Chameleon and Janus models saved to a
directory (nothing is downloaded): UniMoD fine-tuning for a few steps -> `modlab eval` on the
written checkpoint (MMU answers, T2I images, LM perplexity under causal routing, kept fractions)."""

from __future__ import annotations

import json

import pytest
from helpers import TINY, only_run_dir, run_modlab, save_tiny_hf_unified

pytest.importorskip("transformers")

SMALL = ("data.batch_size={t2i: 2, mmu: 2, lm: 1}", "data.eval_batch_size=8")
# what every run reports; T2I scoring needs a VQ decoder (Chameleon has none in transformers)
COMMON = {"test/mmu_acc", "test/lm_ppl", "test/ref_classifier_acc", "test/kept/t2i/layer2", "test/kept/mmu/layer3"}
T2I_KEYS = {"chameleon": {"test/t2i_skipped"}, "janus": {"test/t2i_acc", "test/ref_classifier_acc_tokenized"}}


@pytest.mark.parametrize("family", ["chameleon", "janus"])
def test_unimod_fine_tune_then_eval(family, tmp_path):
    model_dir = save_tiny_hf_unified(tmp_path / family, family)
    proc = run_modlab(
        "train", f"+experiment=hf_{family}_unimod", f"model.path={model_dir}", *TINY, *SMALL, out_dir=tmp_path / "t"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "t")
    assert run.parts[-3:-1] == ("train", f"hf_{family}_unimod")
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["train/steps"] == 4 and trained["vq_params"] > 0

    proc = run_modlab("eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "debug=fast", out_dir=tmp_path / "e")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((only_run_dir(tmp_path / "e") / "metrics.json").read_text())
    assert COMMON | T2I_KEYS[family] <= set(m), sorted(m)
    assert ("test/t2i_acc" in m) == (family == "janus")
    assert 0.0 <= m["test/mmu_acc"] <= 1.0 and m["test/lm_ppl"] > 1.0
