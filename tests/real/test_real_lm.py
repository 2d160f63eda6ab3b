"""The real-model tier: Gemma 3 270M (`make real-lm` makes its transformers directory; CI makes it
too). Skipped where the directory has not been made. Each test is short (a few rows, a few
steps) so the real path cannot rot: perplexity equal to transformers' own, one analysis through
the CLI within its memory, a few Router-Tuning steps whose base perplexity is the model's own."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import only_run_dir, real_lm_dir, reference_perplexity, run_modlab, text_windows

pytestmark = pytest.mark.real

REAL = real_lm_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="no real model here: `make real-lm` makes it")


@needs_real
def test_real_perplexity_equals_transformers_own_on_the_same_windows():
    from modlab.data.config import DataConfig
    from modlab.evaluation.perplexity import TokenPerplexity
    from modlab.models.hf_causal_lm import load_hf_causal_lm
    from modlab.models.token_nll import lm_nll
    from modlab.training.config import EvalConfig
    from modlab.training.text_datamodule import TextDataModule

    lm, tokenizer = load_hf_causal_lm(str(REAL))
    dm = TextDataModule(DataConfig(name="text", lm_length=128, eval_batch_size=4), EvalConfig(lm_max_rows=8), tokenizer)
    assert dm.prefix == [tokenizer.tok.bos_token_id]  # Gemma is scored after <bos>, as it was trained
    ppl = TokenPerplexity()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            ppl.update(*lm_nll(lm, batch["ids"], batch["labels"], batch["valid"]))
    ours = float(ppl.compute())
    theirs = reference_perplexity(lm.hf, tokenizer.tok, text_windows(dm))
    assert ours == pytest.approx(theirs, rel=0.005)
    assert ours < 60  # a pretrained model on English prose (without <bos> it reads ~170)


@needs_real
def test_real_redundancy_analysis_on_a_few_rows(tmp_path):
    proc = run_modlab(
        "analyze",
        "redundancy",
        "model=hf_causal_lm",
        f"model.path={REAL}",
        "calibration.n_per_task=4",
        "calibration.batch_size=2",
        out_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert {r["layer"] for r in results["results"]["arank"]} == set(range(18))
    assert "routing_plan" in results
    assert "ARank (pre_softmax) 2/2" in proc.stdout + proc.stderr  # progress lines in a piped run


@needs_real
def test_real_router_tuning_steps_and_its_base_perplexity(tmp_path):
    from modlab.data.config import DataConfig
    from modlab.models.hf_causal_lm import load_hf_causal_lm
    from modlab.training.config import EvalConfig
    from modlab.training.text_datamodule import TextDataModule

    rows = 4
    proc = run_modlab(
        "train",
        "+experiment=lm_router_tuning",
        "model=hf_causal_lm",
        f"model.path={REAL}",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.val_batches=1",
        "data.lm_train_rows=8",
        "data.batch_size.lm=4",
        "data.eval_batch_size=4",
        f"eval.lm_max_rows={rows}",
        "eval.speed_prompts=0",
        "mindskip.calibration_rows=4",
        out_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    lm, tokenizer = load_hf_causal_lm(str(REAL))
    dm = TextDataModule(DataConfig(name="text", eval_batch_size=4), EvalConfig(lm_max_rows=rows), tokenizer)
    assert m["test/ppl_base"] == pytest.approx(reference_perplexity(lm.hf, tokenizer.tok, text_windows(dm)), rel=0.005)
    assert 0.0 <= m["test/capacity"] <= 1.0
