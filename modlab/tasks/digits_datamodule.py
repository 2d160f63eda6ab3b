"""Lightning data module for the unified tasks on real digits + the offline text corpus.

Training batches mix the tasks in fixed proportions (`data.batch_size` rows of each task per
step) through Lightning's CombinedLoader, so DDP sharding keeps working.
"""

from __future__ import annotations

from functools import partial

import lightning as L
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Subset

from modlab.data.config import DataConfig
from modlab.data.digits import load_digit_splits
from modlab.data.image_tokenizer import build_image_tokenizer
from modlab.data.rows import DigitRows, LMRows, MMUPrompts, T2IPrompts, collate_rows
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.data.tokens import TokenSpace
from modlab.tasks.config import EvalConfig


def image_tokenizer_for(cfg: DataConfig):
    """The (unfitted) image tokenizer a data config asks for."""
    return build_image_tokenizer(cfg.image_tokenizer, levels=cfg.levels, codebook_size=cfg.codebook_size,
                                 patch=cfg.patch, seed=cfg.split_seed)


class DigitsDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, eval_cfg: EvalConfig, image_tokenizer=None):
        """`image_tokenizer`: a fitted one (from a checkpoint); otherwise fitted on train digits."""
        super().__init__()
        self.cfg, self.eval_cfg = cfg, eval_cfg
        self.splits = load_digit_splits(cfg.split_seed)
        self.image_tokenizer = image_tokenizer or image_tokenizer_for(cfg).fit(self.splits["train"].images)
        self.space = TokenSpace(self.image_tokenizer.n_codes)
        self.codes = {k: self.image_tokenizer.encode(v.images) for k, v in self.splits.items()}
        self.text = split_corpus(load_corpus(cfg.lm_files))
        self._collate = partial(collate_rows, pad_id=self.space.pad)

    def _loader(self, ds, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=self._collate,
                          num_workers=self.cfg.num_workers, drop_last=shuffle,
                          persistent_workers=self.cfg.num_workers > 0)

    def _task_sets(self, split: str) -> dict:
        train = split == "train"
        sets = {
            "t2i": DigitRows(self.space, self.codes[split], self.splits[split].labels, "t2i", train),
            "mmu": DigitRows(self.space, self.codes[split], self.splits[split].labels, "mmu", train),
            "lm": LMRows(self.text[split], self.cfg.lm_length, train),
        }
        return {k: v for k, v in sets.items() if self.cfg.batch_size.get(k, 0) > 0}

    def train_dataloader(self):
        loaders = {k: self._loader(ds, self.cfg.batch_size[k], True) for k, ds in self._task_sets("train").items()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        loaders = {k: self._loader(ds, self.cfg.eval_batch_size, False) for k, ds in self._task_sets("val").items()}
        return CombinedLoader(loaders, mode="max_size")

    def test_dataloader(self):
        """Three loaders, in this order: MMU prompts, T2I prompts, LM test rows."""
        e, bs = self.eval_cfg, self.cfg.eval_batch_size
        mmu = MMUPrompts(self.space, self.codes["test"], self.splits["test"].labels)
        if e.mmu_max_rows:
            mmu = Subset(mmu, range(min(e.mmu_max_rows, len(mmu))))
        t2i = T2IPrompts(self.space, self.image_tokenizer.n_tokens, e.t2i_per_digit)
        lm = LMRows(self.text["test"], self.cfg.lm_length, train=False)
        if e.lm_max_rows:
            lm = Subset(lm, range(min(e.lm_max_rows, len(lm))))
        return [self._loader(ds, bs, False) for ds in (mmu, t2i, lm)]
