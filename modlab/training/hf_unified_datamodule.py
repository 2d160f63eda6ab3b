"""Lightning data module for Hugging Face unified models: T2I, MMU and LM rows in the model's own
format (modlab.models.hf_unified), from the real digits rendered at the VQ codec's resolution (the
offline default) or from the user's images (`data.image_folder`: a folder with captions.jsonl /
captions.csv, modlab.data.image_folder).

Every image is tokenized by the model's VQ encoder once: digits per split, a user folder through
its on-disk cache (keyed by the codec's identity and the folder's content), so later epochs and
runs never run the encoder again. A model whose vision encoder reads MMU images (Janus's
understanding path, `mmu_reads_pixels`) gets the images too: digits rendered as RGB, or the
folder's images read again (pixels are not cached). Training batches mix the tasks in fixed proportions
(`data.batch_size`) through Lightning's CombinedLoader, as DigitsDataModule does; the test loaders
are DigitsDataModule's three: MMU prompts (one question, so rows of one length), T2I prompts
("a handwritten <digit>", left-padded: every row ends where its image starts), LM rows.
"""

from __future__ import annotations

from functools import partial

import lightning as L
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Subset

from modlab.data import digits as D
from modlab.data.hf_unified_rows import (
    DigitCodec,
    DigitImages,
    FolderImages,
    ImageRows,
    PromptRows,
    TextRows,
    digit_codes,
)
from modlab.data.image_folder import tokenize_image_folder
from modlab.data.rows import collate_rows, left_pad
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.training.resume import link_loaders, resumable_loader


class HFUnifiedDataModule(L.LightningDataModule):
    def __init__(self, cfg, eval_cfg, model, cache_dir: str | None = None):
        """`cache_dir`: where image codes are cached (None: the digits are encoded again)."""
        super().__init__()
        self.cfg, self.eval_cfg, self.model = cfg, eval_cfg, model
        self.image_tokenizer = DigitCodec(model.codec)
        self.splits = D.load_digit_splits(cfg.split_seed)
        self.codes = digit_codes(self.image_tokenizer, self.splits, cfg.split_seed, cache_dir)
        self.folder = None
        if cfg.image_folder:
            self.folder = tokenize_image_folder(cfg.image_folder, model.codec, cache_dir)
        text = split_corpus(load_corpus(cfg.lm_files))
        self.text = {k: v.decode("utf-8", "replace") for k, v in text.items()}
        self._collate = partial(collate_rows, pad_id=model.pad)

    def digit_images(self, split: str) -> DigitImages:
        return DigitImages(self.splits[split].images, self.model.codec.resolution)

    def _loader(self, ds, batch_size: int, train: bool, collate=None) -> DataLoader:
        collate = collate or self._collate
        if train:  # its position is part of the checkpoint (exact resume)
            return resumable_loader(ds, batch_size, collate_fn=collate, num_workers=self.cfg.num_workers)
        return DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=self.cfg.num_workers)

    def _task_sets(self, split: str) -> dict:
        train, m = split == "train", self.model
        if self.folder is not None and split == "train":
            f = self.folder
            with_answers = [i for i, r in enumerate(f.records) if r.answer is not None]
            sets = {"t2i": ImageRows(m, f.codes, "t2i", True, records=f.records)}
            if with_answers:
                images = FolderImages(self.cfg.image_folder, f.records, m.codec.resolution)
                sets["mmu"] = Subset(ImageRows(m, f.codes, "mmu", True, records=f.records, images=images), with_answers)
        else:
            labels, images = self.splits[split].labels, self.digit_images(split)
            sets = {t: ImageRows(m, self.codes[split], t, train, labels, images=images) for t in ("t2i", "mmu")}
        sets["lm"] = TextRows(m, self.text[split], self.cfg.lm_length, train)
        return {k: v for k, v in sets.items() if self.cfg.batch_size.get(k, 0) > 0}

    def train_tasks(self) -> list[str]:
        """The tasks that have training rows."""
        return list(self._task_sets("train"))

    def train_dataloader(self):
        loaders = {k: self._loader(ds, self.cfg.batch_size[k], True) for k, ds in self._task_sets("train").items()}
        link_loaders(loaders.values())
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        loaders = {k: self._loader(ds, self.cfg.eval_batch_size, False) for k, ds in self._task_sets("val").items()}
        return CombinedLoader(loaders, mode="max_size")

    def test_dataloader(self):
        """Three loaders, in this order: MMU prompts, T2I prompts, LM test rows."""
        e, bs, m = self.eval_cfg, self.cfg.eval_batch_size, self.model
        mmu = PromptRows(m, "mmu", self.codes["test"], self.splits["test"].labels, images=self.digit_images("test"))
        if e.mmu_max_rows:
            mmu = Subset(mmu, range(min(e.mmu_max_rows, len(mmu))))
        t2i = PromptRows(m, "t2i", per_digit=e.t2i_per_digit)
        lm = TextRows(m, self.text["test"], self.cfg.lm_length, train=False)
        if e.lm_max_rows:
            lm = Subset(lm, range(min(e.lm_max_rows, len(lm))))
        prompts = partial(left_pad, pad_id=m.pad)
        return [
            self._loader(mmu, bs, False, prompts),
            self._loader(t2i, bs, False, prompts),
            self._loader(lm, bs, False),
        ]
