"""Calibration batches: N held-out rows per task, drawn with a seed, collated per task.

Rows of one task go through the model together (as in training), so a task's statistics are
never mixed with another task's padding. Digit rows use fixed caption / question templates
(the evaluation form); LM rows are windows of the held-out text, as `modlab eval` reads it (in
the model's own tokens for a Hugging Face LM with a tokenizer).
"""

from __future__ import annotations

import torch

from modlab.data.config import DataConfig
from modlab.data.digits import load_digit_splits
from modlab.data.rows import DigitRows, LMRows, collate_rows
from modlab.data.text_corpus import corpus_tokens
from modlab.data.tokens import TokenSpace
from modlab.errors import DataError

LM_PAD = 0  # a causal LM's rows are padded with any id: `valid` masks them (as TextDataModule)


def calibration_batches(
    data_cfg: DataConfig,
    image_tokenizer,
    tasks: list[str],
    n_per_task: int,
    seed: int,
    split: str = "val",
    batch_size: int = 64,
    text_tokenizer=None,
) -> dict[str, list[dict]]:
    """{task: [collated batch, ...]} with n_per_task rows per task (fewer if the split is smaller).
    `image_tokenizer` None: a causal LM (only the `lm` task), whose text is tokenized by
    `text_tokenizer` (None: UTF-8 bytes)."""
    space = TokenSpace(image_tokenizer.n_codes) if image_tokenizer is not None else None
    g = torch.Generator().manual_seed(seed)
    sets = {}
    if {"t2i", "mmu"} & set(tasks):
        digits = load_digit_splits(data_cfg.split_seed)[split]
        codes = image_tokenizer.encode(digits.images)
        for task in ("t2i", "mmu"):
            if task in tasks:
                sets[task] = DigitRows(space, codes, digits.labels, task, train=False)
    if "lm" in tasks and getattr(data_cfg, "lm_format", "text") == "alpaca":  # instruction rows
        from modlab.data.instructions import ListRows, instruction_splits

        sets["lm"] = ListRows(instruction_splits(data_cfg.lm_files, text_tokenizer, data_cfg.lm_length)[0][split])
    elif "lm" in tasks:
        fmt, field = getattr(data_cfg, "lm_format", "text"), getattr(data_cfg, "text_field", "text")
        tokens = corpus_tokens(data_cfg.lm_files, text_tokenizer, fmt, field)[split]
        if len(tokens) < data_cfg.lm_length + 1:
            raise DataError(
                f"the {split} split has {len(tokens)} tokens of text, fewer than one row of "
                f"data.lm_length={data_cfg.lm_length}"
            )
        sets["lm"] = LMRows(tokens, data_cfg.lm_length, train=False)
    out = {}
    for task in tasks:
        ds = sets[task]
        if len(ds) == 0:
            raise DataError(f"the {split} split has no {task} rows to calibrate on")
        idx = torch.randperm(len(ds), generator=g)[:n_per_task].tolist()
        rows = [ds[i] for i in idx]
        out[task] = [
            collate_rows(rows[i : i + batch_size], space.pad if space else LM_PAD)
            for i in range(0, len(rows), batch_size)
        ]
    return out
