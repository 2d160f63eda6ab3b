"""Lightning data module for the unified tasks on real digits (one per image, or digit scenes:
`data.kind`) + the offline text corpus.

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
from modlab.data.rows import (
    DigitRows,
    LMRows,
    MMUPrompts,
    PreBatched,
    SceneMMUPrompts,
    SceneRows,
    SceneT2IPrompts,
    T2IPrompts,
    collate_prebatched,
    collate_rows,
    same_length_batches,
)
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.data.tokens import TokenSpace
from modlab.training.config import EvalConfig
from modlab.training.resume import link_loaders, resumable_loader


def image_tokenizer_for(cfg: DataConfig):
    """The (unfitted) image tokenizer a data config asks for."""
    return build_image_tokenizer(
        cfg.image_tokenizer,
        levels=cfg.levels,
        codebook_size=cfg.codebook_size,
        patch=cfg.patch,
        seed=cfg.split_seed,
        image_size=cfg.image_size,
    )


class DigitsDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, eval_cfg: EvalConfig, image_tokenizer=None):
        """`image_tokenizer`: a fitted one (from a checkpoint); otherwise fitted on train digits."""
        super().__init__()
        self.cfg, self.eval_cfg = cfg, eval_cfg
        self.splits = load_digit_splits(cfg.split_seed)
        self.image_tokenizer = image_tokenizer or image_tokenizer_for(cfg).fit(self.splits["train"].images)
        self.space = TokenSpace(self.image_tokenizer.n_codes)
        self.scenes = cfg.kind == "scenes"
        # single digits are tokenized once; scenes are drawn and tokenized per item
        self.codes = {} if self.scenes else {k: self.image_tokenizer.encode(v.images) for k, v in self.splits.items()}
        self.text = split_corpus(load_corpus(cfg.lm_files))
        self._collate = partial(collate_rows, pad_id=self.space.pad)

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
            num_workers=self.cfg.num_workers,
            drop_last=shuffle,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def _image_rows(self, split: str, task: str):
        train = split == "train"
        if self.scenes:
            c = self.cfg
            n = {"train": c.train_scenes, "val": c.val_scenes, "test": c.test_scenes}[split]
            return SceneRows(
                self.space, self.image_tokenizer, self.splits[split], split, c.grid, n, task, train, c.scene_seed
            )
        return DigitRows(self.space, self.codes[split], self.splits[split].labels, task, train)

    def _task_sets(self, split: str) -> dict:
        train = split == "train"
        sets = {
            "t2i": self._image_rows(split, "t2i"),
            "mmu": self._image_rows(split, "mmu"),
            "lm": LMRows(self.text[split], self.cfg.lm_length, train),
        }
        return {k: v for k, v in sets.items() if self.cfg.batch_size.get(k, 0) > 0}

    def train_dataloader(self):
        loaders = {k: self._loader(ds, self.cfg.batch_size[k], True) for k, ds in self._task_sets("train").items()}
        link_loaders(loaders.values())
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        loaders = {k: self._loader(ds, self.cfg.eval_batch_size, False) for k, ds in self._task_sets("val").items()}
        return CombinedLoader(loaders, mode="max_size")

    def test_dataloader(self):
        """Three loaders, in this order: MMU prompts, T2I prompts, LM test rows."""
        e, bs = self.eval_cfg, self.cfg.eval_batch_size
        lm = LMRows(self.text["test"], self.cfg.lm_length, train=False)
        if e.lm_max_rows:
            lm = Subset(lm, range(min(e.lm_max_rows, len(lm))))
        if self.scenes:
            return [
                self._scene_mmu_loader(),
                self._loader(self._scene_t2i_prompts(), bs, False),
                self._loader(lm, bs, False),
            ]
        mmu = MMUPrompts(self.space, self.codes["test"], self.splits["test"].labels)
        if e.mmu_max_rows:
            mmu = Subset(mmu, range(min(e.mmu_max_rows, len(mmu))))
        t2i = T2IPrompts(self.space, self.image_tokenizer.n_tokens, e.t2i_per_digit)
        return [self._loader(ds, bs, False) for ds in (mmu, t2i, lm)]

    # ---- digit scenes: evaluation prompts --------------------------------------------------

    def scene_mmu_prompts(self) -> SceneMMUPrompts:
        c, e = self.cfg, self.eval_cfg
        n = min(e.mmu_max_rows, c.test_scenes) if e.mmu_max_rows else c.test_scenes
        return SceneMMUPrompts(self.space, self.image_tokenizer, self.splits["test"], c.grid, n, c.scene_seed)

    def _scene_t2i_prompts(self) -> SceneT2IPrompts:
        c = self.cfg
        return SceneT2IPrompts(
            self.space, self.image_tokenizer, self.splits["test"], c.grid, self.eval_cfg.t2i_per_category, c.scene_seed
        )

    def _scene_mmu_loader(self) -> DataLoader:
        """Questions differ in length and greedy decoding needs unpadded rows: batch rows of one length."""
        ds = self.scene_mmu_prompts()
        batches = same_length_batches([ds.question_length(i) for i in range(len(ds))], self.cfg.eval_batch_size)
        return DataLoader(
            PreBatched(ds, batches),
            batch_size=1,
            num_workers=self.cfg.num_workers,
            collate_fn=partial(collate_prebatched, pad_id=self.space.pad),
        )
