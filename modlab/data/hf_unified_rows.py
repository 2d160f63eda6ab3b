"""The data sets of Hugging Face unified models (modlab.models.hf_unified): T2I, MMU and LM rows in
the model's own format (the model lays a row out: `t2i_row`, `mmu_row`, `lm_row`, `t2i_prompt`),
over digits or the user's images tokenized by the model's VQ codec (modlab.data.vq_codec), and
windows of the text corpus. The Lightning data module that mixes them is
modlab.training.hf_unified_datamodule.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from modlab.data import digits as D
from modlab.data.image_folder import load_image
from modlab.data.vq_codec import digits_as_rgb, rgb_as_digits


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
