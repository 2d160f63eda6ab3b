"""Calibration batches: N held-out rows per task, drawn with a seed, collated per task.

Rows of one task go through the model together (as in training), so a task's statistics are
never mixed with another task's padding. Image rows are of the checkpoint's own `data.kind`,
coded by its own image tokenizer: single digits (DigitRows) or digit scenes (SceneRows of the
split, drawn as the data module draws its validation / test scenes), with the evaluation
templates. A scenes model analysed on single-digit rows would be measured on rows it never saw
(16 instead of 64 image tokens with the patch codebook, 35-62 instead of 80-100 tokens). LM rows
are windows of the held-out text, as `modlab eval` reads it (in the model's own tokens for a
Hugging Face LM with a tokenizer).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from modlab.data.config import DataConfig
from modlab.data.digits import load_digit_splits
from modlab.data.instructions import ListRows, instruction_splits
from modlab.data.rows import DigitRows, LMRows, SceneRows, collate_rows
from modlab.data.text_corpus import corpus_tokens
from modlab.data.tokens import TokenSpace
from modlab.errors import DataError

LM_PAD = 0  # a causal LM's rows are padded with any id: `valid` masks them (as TextDataModule)


def image_rows(
    data_cfg: DataConfig, image_tokenizer, tasks: list[str], split: str, train: bool = False
) -> dict[str, Dataset]:
    """{task: rows of `split`} for t2i / mmu, of the data kind the model trained on: evaluation
    templates, or with `train` the training form (random templates), e.g. for short training
    runs on a checkpoint's own kind of data (the interactions job)."""
    space = TokenSpace(image_tokenizer.n_codes)
    digits = load_digit_splits(data_cfg.split_seed)[split]
    if data_cfg.kind == "scenes":
        c = data_cfg
        n = {"train": c.train_scenes, "val": c.val_scenes, "test": c.test_scenes}[split]
        return {t: SceneRows(space, image_tokenizer, digits, split, c.grid, n, t, train, c.scene_seed) for t in tasks}
    codes = image_tokenizer.encode(digits.images)
    return {t: DigitRows(space, codes, digits.labels, t, train=train) for t in tasks}


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
        sets.update(image_rows(data_cfg, image_tokenizer, [t for t in ("t2i", "mmu") if t in tasks], split))
    if "lm" in tasks and getattr(data_cfg, "lm_format", "text") == "alpaca":  # instruction rows
        sets["lm"] = ListRows(instruction_splits(data_cfg.lm_files, text_tokenizer, data_cfg.lm_length)[0][split])
    elif "lm" in tasks:
        fmt, field = getattr(data_cfg, "lm_format", "text"), getattr(data_cfg, "text_field", "text")
        tokens = corpus_tokens(data_cfg.lm_files, text_tokenizer, fmt, field)[split]
        if len(tokens) < data_cfg.lm_length + 1:
            raise DataError(
                f"the {split} split has {len(tokens)} tokens of text, fewer than one row of "
                f"data.lm_length={data_cfg.lm_length}"
            )
        sets["lm"] = LMRows(tokens, data_cfg.lm_length, train=False, prefix=getattr(text_tokenizer, "prefix", []))
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
