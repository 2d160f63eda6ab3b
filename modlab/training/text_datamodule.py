"""Lightning data module for causal LMs: fixed-length token windows of the offline text corpus
(Python's docs, or the user's text / JSONL files), split by contiguous blocks into train / val /
test; or, with `data.lm_format=alpaca`, one row per instruction record (loss on the response;
modlab.data.instructions), split the same way."""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from modlab.data.config import DataConfig
from modlab.data.instructions import ListRows, instruction_splits
from modlab.data.rows import LMRows, collate_rows
from modlab.data.text_corpus import corpus_tokens
from modlab.errors import DataError
from modlab.training.config import EvalConfig
from modlab.training.resume import resumable_loader

log = logging.getLogger("modlab")


def spread(n_total: int, n: int) -> list[int]:
    """n indices spread evenly over range(n_total) (all of them if n >= n_total)."""
    if n >= n_total:
        return list(range(n_total))
    return [i * n_total // n for i in range(n)]


class TextDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, eval_cfg: EvalConfig, tokenizer):
        super().__init__()
        self.cfg, self.eval_cfg, self.tokenizer = cfg, eval_cfg, tokenizer
        self.prefix = list(getattr(tokenizer, "prefix", []))  # e.g. <bos>: rows start as the model expects
        self.rows: dict[str, list[dict]] | None = None  # instruction rows (data.lm_format=alpaca)
        if cfg.lm_format == "alpaca":
            self.rows, dropped = instruction_splits(cfg.lm_files, tokenizer, cfg.lm_length)
            if dropped:
                log.warning("%d instruction record(s) left out: no response fits in %d tokens", dropped, cfg.lm_length)
            # the instruction rows back to back: prompts for the speed measurement
            self.tokens = {k: [int(t) for r in rows for t in r["ids"]] for k, rows in self.rows.items()}
        else:
            self.tokens = corpus_tokens(cfg.lm_files, tokenizer, cfg.lm_format, cfg.text_field)
            for name, toks in self.tokens.items():
                if len(toks) < cfg.lm_length + 1:
                    raise DataError(
                        f"the {name} split has {len(toks)} tokens, fewer than one row of data.lm_length={cfg.lm_length}"
                    )
        self.batch_size = cfg.batch_size.get("lm", 0)
        if self.batch_size < 1:
            raise DataError("causal-LM training needs data.batch_size.lm >= 1")
        self._collate = partial(collate_rows, pad_id=0)  # rows have one length: nothing is padded

    def windows(self, split: str, n: int = 0) -> Subset | LMRows | ListRows:
        """Fixed windows of a split (a tiling), or its instruction rows; n of them spread over the
        split (0: all)."""
        if self.rows is not None:
            rows = ListRows(self.rows[split])
        else:
            rows = LMRows(self.tokens[split], self.cfg.lm_length, train=False, prefix=self.prefix)
        return Subset(rows, spread(len(rows), n)) if n else rows

    def _loader(self, ds, batch_size: int, shuffle: bool) -> DataLoader:
        if shuffle:  # training: its position is part of the checkpoint (exact resume)
            return resumable_loader(
                ds,
                batch_size,
                collate_fn=self._collate,
                num_workers=self.cfg.num_workers,
                persistent_workers=self.cfg.num_workers > 0,
            )
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self._collate,
            drop_last=shuffle,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self):
        if self.cfg.lm_train_rows or self.rows is not None:  # Router-Tuning's small fixed set; instructions
            ds = self.windows("train", self.cfg.lm_train_rows)
        else:  # pretraining: a random window each time
            ds = LMRows(self.tokens["train"], self.cfg.lm_length, train=True, prefix=self.prefix)
        return self._loader(ds, min(self.batch_size, len(ds)), True)

    def val_dataloader(self):
        return self._loader(self.windows("val"), self.cfg.eval_batch_size, False)

    def test_dataloader(self):
        return self._loader(self.windows("test", self.eval_cfg.lm_max_rows), self.cfg.eval_batch_size, False)

    def calibration_batches(self, n_rows: int) -> list[dict]:
        """Training windows for the static LLM-Drop scores (never the test text)."""
        return list(self._loader(self.windows("train", n_rows), self.cfg.eval_batch_size, False))

    def prompts(self, n: int, length: int) -> list:
        """n batch-1 test prompts of `length` tokens for the speed measurement (wrapping the test
        text if it is short)."""
        toks, span = list(self.tokens["test"]), length - len(self.prefix)
        while len(toks) < n * span:
            toks = toks + toks
        return [torch.tensor(self.prefix + toks[i * span : (i + 1) * span])[None] for i in range(n)]
