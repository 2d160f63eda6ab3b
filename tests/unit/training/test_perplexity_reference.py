"""modlab's perplexity of a Hugging Face LM is the model's own: the same windows of held-out text,
tokenized the way the model expects (its tokenizer's special tokens before the text), scored by
transformers' own loss (`labels=`). The real-model version of this test is in tests/real/."""

from __future__ import annotations

import pytest
import torch
from helpers import reference_perplexity, save_tiny_bos_tokenizer, save_tiny_hf, text_windows

from modlab.data.config import DataConfig
from modlab.data.rows import LMRows
from modlab.data.tokens import IGNORE_INDEX
from modlab.training.config import EvalConfig
from modlab.training.text_datamodule import TextDataModule


def modlab_perplexity(module, dm) -> float:
    module.test_ppl.reset()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            module.test_ppl.update(*module.nll(batch))
    return float(module.test_ppl.compute())


def build(path, bos: bool, rows: int = 6, length: int = 40):
    from modlab.training.hf_lm import HFLMModule

    save_tiny_hf(path, "llama")
    save_tiny_bos_tokenizer(path, bos=bos)
    data = {"name": "text", "lm_length": length, "batch_size": {"lm": 4}, "eval_batch_size": 4}
    module = HFLMModule({"arch": "hf", "path": str(path)}, data, {"name": "lm"}, {"lm_max_rows": rows}).eval()
    dm = TextDataModule(DataConfig(**data), EvalConfig(lm_max_rows=rows), module.tokenizer)
    return module, dm


@pytest.mark.parametrize("bos", [True, False])
def test_perplexity_equals_transformers_own_on_the_same_windows(tmp_path, bos: bool):
    module, dm = build(tmp_path / "m", bos)
    assert dm.prefix == ([256] if bos else [])
    windows = text_windows(dm)
    assert len(windows) == 6 and all(len(w) == 40 - len(dm.prefix) for w in windows)
    ours = modlab_perplexity(module, dm)
    theirs = reference_perplexity(module.lm.hf, module.tokenizer.tok, windows)
    assert ours == pytest.approx(theirs, rel=1e-4)  # acceptance: 0.5 %; fp32 agrees far closer


def test_text_windows_with_a_prefix_label_every_text_token_once():
    text = list(range(100, 150))
    rows = LMRows(text, length=6, train=False, prefix=[7])
    assert len(rows) == 10
    labelled = []
    for i in range(len(rows)):
        r = rows[i]
        assert r["ids"][0] == 7 and len(r["ids"]) == 6
        labelled += [int(t) for t in r["labels"] if t != IGNORE_INDEX]
    assert labelled == text


def test_a_two_token_prefix_labels_no_prefix_token():
    r = LMRows(list(range(100, 120)), length=6, train=False, prefix=[1, 2])[0]
    assert r["ids"].tolist() == [1, 2, 100, 101, 102, 103]
    assert r["labels"].tolist() == [IGNORE_INDEX, 100, 101, 102, 103, IGNORE_INDEX]


def test_the_special_prefix_of_a_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from modlab.data.text_tokenizer import ByteTokenizer, HFTokenizer

    with_bos = HFTokenizer(AutoTokenizer.from_pretrained(save_tiny_bos_tokenizer(tmp_path / "a", bos=True)))
    without = HFTokenizer(AutoTokenizer.from_pretrained(save_tiny_bos_tokenizer(tmp_path / "b", bos=False)))
    assert with_bos.prefix == [256] and without.prefix == [] and ByteTokenizer().prefix == []
    assert with_bos.encode("hi") == without.encode("hi") and len(with_bos.encode("hi")) == 2  # encode adds nothing
