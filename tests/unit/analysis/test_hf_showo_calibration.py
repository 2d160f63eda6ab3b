"""The hf_showo family's calibration rows (what ARank, attention shares and LLM-Drop importance
read) mark Show-o's own [PAD] tokens (the T2I text field's left padding) invalid, as the model's
forward does: they are masked out of the attention and never routed, so their queries and keys
must not enter the analyses."""

from __future__ import annotations

import pytest
from helpers import save_tiny_hf_showo

from modlab.analysis.config import CalibrationConfig
from modlab.families import get_family
from modlab.families.hf_unified_family import calibration_rows
from modlab.models.config import ModelConfig

pytest.importorskip("transformers")


def test_showo_pad_tokens_are_not_valid_calibration_tokens(tmp_path):
    path = save_tiny_hf_showo(tmp_path / "showo")
    module = get_family("hf_showo").family().load_pretrained(ModelConfig(arch="hf_showo", path=str(path)))
    batches, _ = calibration_rows(module, CalibrationConfig(n_per_task=4, batch_size=4))
    pad = module.model.pad
    t2i = batches["t2i"][0]
    assert bool((t2i["ids"] == pad).any())  # T2I rows hold [PAD] inside the row (the text field's left padding)
    for task, task_batches in batches.items():
        for b in task_batches:
            assert not bool((b["valid"] & (b["ids"] == pad)).any()), task
            assert bool(b["valid"].any())
