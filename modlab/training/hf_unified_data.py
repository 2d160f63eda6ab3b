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

import os
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset

from modlab.data import digits as D
from modlab.data.rows import collate_rows
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.models.hf_image_codec import digits_as_rgb, rgb_as_digits
from modlab.models.hf_unified import left_pad
from modlab.training.resume import link_loaders, resumable_loader


class DigitCodec:
    """The VQ codec seen as modlab's 8x8 digit image tokenizer (encode 8x8 grey digits, decode to
    them), so the unified test (reference classifier, FID) scores the model's images unchanged."""

    def __init__(self, codec):
        self.codec = codec
        self.n_codes, self.n_tokens = codec.n_codes, codec.n_tokens

    def encode(self, images) -> torch.Tensor:
        return self.codec.encode(digits_as_rgb(images, self.codec.resolution))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return rgb_as_digits(self.codec.decode(codes.cpu()))

    def state_dict(self) -> dict:
        return {"kind": "hf_vq", "identity": self.codec.identity}


class DigitImages:
    """8x8 digits as uint8 RGB at the codec's resolution, rendered one at a time: the pixels of
    MMU rows for models whose vision encoder reads the image (mmu_reads_pixels)."""

    def __init__(self, digits, resolution: int):
        self.digits, self.resolution = digits, resolution

    def __getitem__(self, i: int):
        return digits_as_rgb(self.digits[i : i + 1], self.resolution)[0]


class FolderImages:
    """The user's images (data.image_folder) as the codec saw them, read one at a time."""

    def __init__(self, folder: str, records, resolution: int):
        self.folder, self.records, self.resolution = Path(folder), records, resolution

    def __getitem__(self, i: int):
        from modlab.data.image_folder import load_image

        return load_image(self.folder / self.records[i].file, self.resolution)


def image_keyword(model, images, i: int) -> dict:
    """mmu_row's `image` keyword for a model that reads pixels (the others take no such argument)."""
    return {"image": images[i]} if images is not None and model.mmu_reads_pixels else {}


class ImageRows(Dataset):
    """T2I or MMU rows over tokenized images: digits (captions / questions from the templates,
    random when training) or the user's records (their own caption, question and answer).
    `images`: the images themselves (uint8 RGB), given to MMU rows of models that read pixels."""

    def __init__(self, model, codes: torch.Tensor, task: str, train: bool, labels=None, records=None, images=None):
        self.model, self.codes, self.task, self.train = model, codes, task, train
        self.labels, self.records, self.images = labels, records, images

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> dict:
        m = self.model
        if self.records is not None:
            r = self.records[i]
            if self.task == "t2i":
                return m.t2i_row(r.caption, self.codes[i])
            return m.mmu_row(self.codes[i], r.question, r.answer, **image_keyword(m, self.images, i))
        d = int(self.labels[i])
        t = int(torch.randint(0, 1 << 30, ())) if self.train else i
        if self.task == "t2i":
            return m.t2i_row(D.caption(d, t), self.codes[i], d)
        return m.mmu_row(self.codes[i], D.question(t), D.answer(d, t), d, **image_keyword(m, self.images, i))


class PromptRows(Dataset):
    """Test prompts: MMU (a digit's codes, or its `images` for models that read pixels, + the
    first question) or T2I ("a handwritten <d>")."""

    def __init__(self, model, task: str, codes=None, labels=None, per_digit: int = 0, images=None):
        self.model, self.task, self.codes, self.labels, self.per_digit = model, task, codes, labels, per_digit
        self.images = images

    def __len__(self) -> int:
        return len(self.labels) if self.task == "mmu" else 10 * self.per_digit

    def __getitem__(self, i: int) -> dict:
        if self.task == "mmu":
            image = image_keyword(self.model, self.images, i)
            return self.model.mmu_row(self.codes[i], D.question(0), None, int(self.labels[i]), **image)
        d = i % 10
        return self.model.t2i_prompt(D.EVAL_CAPTION.format(d=d, name=D.DIGIT_NAMES[d]), d)


class TextRows(Dataset):
    """Windows of the text corpus (characters), tokenized by the model's tokenizer."""

    def __init__(self, model, text: str, length: int, train: bool):
        self.model, self.text, self.length, self.train = model, text, length, train

    def __len__(self) -> int:
        return max(1, len(self.text) // self.length)

    def __getitem__(self, i: int) -> dict:
        start = int(torch.randint(0, max(1, len(self.text) - self.length), ())) if self.train else i * self.length
        return self.model.lm_row(self.text[start : start + self.length])


def digit_codes(tokenizer: DigitCodec, splits: dict, split_seed: int, cache_dir: str | None) -> dict:
    """{split: codes} of the digits, read from `cache_dir` when this codec tokenized them before
    (keyed by its identity and the split seed), else encoded and cached (written atomically)."""
    if not cache_dir:
        return {k: tokenizer.encode(v.images) for k, v in splits.items()}
    path = Path(cache_dir) / f"{tokenizer.codec.identity}-digits-split{split_seed}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError):  # a damaged cache: tokenize again
            pass
    codes = {k: tokenizer.encode(v.images) for k, v in splits.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(codes, tmp)
    os.replace(tmp, path)
    return codes


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
            from modlab.data.image_folder import tokenize_image_folder

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
