"""Loading a Hugging Face unified model in bf16 casts the language model, not its VQ tokenizer: the
codec keeps its fp32 weights, so its identity (the token cache key) and its codes are the fp32 load's."""

from __future__ import annotations

import pytest
import torch
from helpers import save_tiny_hf_unified

from modlab.data.digits import load_digit_splits
from modlab.data.vq_codec import digits_as_rgb
from modlab.models.hf_unified.loader import load_hf_unified

pytest.importorskip("transformers")


def test_a_bf16_load_keeps_the_vq_tokenizer_in_fp32(tmp_path):
    path = str(save_tiny_hf_unified(tmp_path / "emu3"))
    fp32, bf16 = load_hf_unified(path, dtype="float32"), load_hf_unified(path, dtype="bfloat16")
    assert next(bf16.hf.model.text_model.parameters()).dtype == torch.bfloat16
    assert next(bf16.codec.vq.parameters()).dtype == torch.float32
    assert bf16.codec.identity == fp32.codec.identity
    images = digits_as_rgb(load_digit_splits(0)["test"].images[:8], fp32.codec.resolution)
    assert torch.equal(bf16.codec.encode(images), fp32.codec.encode(images))
