"""Token rows for the three tasks, and their collation into padded batches.

A row is a dict of 1-D tensors of one length T:
    ids       token ids
    labels    the id to predict *at* each position (IGNORE_INDEX where there is no loss);
              for next-token tasks labels[i] = ids[i + 1]; T2I labels are filled in by masking
    is_image  True on image-code positions (omni-attention lets these see each other)
    cond      True on the T2I caption (dropped for classifier-free guidance)
and two scalars: `task` (TASK_ID) and `digit` (the class, -1 for LM rows).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from modlab.data import digits as D
from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TokenSpace


def _row(ids: list[int], is_image: list[bool], cond: list[bool], labels: list[int], task: str, digit: int) -> dict:
    return {
        "ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "is_image": torch.tensor(is_image, dtype=torch.bool),
        "cond": torch.tensor(cond, dtype=torch.bool),
        "task": torch.tensor(TASK_ID[task]),
        "digit": torch.tensor(digit),
    }


def t2i_row(space: TokenSpace, caption: str, codes: torch.Tensor | None, n_tokens: int, digit: int = -1) -> dict:
    """`[T2I] caption [SOI] image [EOI]`; with codes=None the image is all [MASK] (a prompt)."""
    text = space.encode_text(caption)
    img = [space.mask] * n_tokens if codes is None else (codes + space.image_offset).tolist()
    ids = [space.t2i, *text, space.soi, *img, space.eoi]
    is_image = [False] * (len(text) + 2) + [True] * n_tokens + [False]
    cond = [False] + [True] * len(text) + [False] * (n_tokens + 2)
    return _row(ids, is_image, cond, [IGNORE_INDEX] * len(ids), "t2i", digit)


def mmu_row(space: TokenSpace, codes: torch.Tensor, question: str, answer: str | None, digit: int = -1) -> dict:
    """`[MMU] [SOI] image [EOI] question answer [EOS]`; answer=None gives the prompt only."""
    img = (codes + space.image_offset).tolist()
    text = space.encode_text(question + " ")
    prefix = [space.mmu, space.soi, *img, space.eoi, *text]
    ids = prefix + ([] if answer is None else [*space.encode_text(answer), space.eos])
    labels = [IGNORE_INDEX] * len(ids)
    # next-token loss on the answer and [EOS] (position i predicts i + 1), as in instruction
    # tuning: the question is given, and a loss on it would only dilute the answer's gradient
    for i in range(len(prefix) - 1, len(ids) - 1):
        labels[i] = ids[i + 1]
    is_image = [False, False] + [True] * len(img) + [False] * (len(ids) - 2 - len(img))
    return _row(ids, is_image, [False] * len(ids), labels, "mmu", digit)


def lm_row(chunk: bytes) -> dict:
    ids = list(chunk)
    labels = ids[1:] + [IGNORE_INDEX]
    n = len(ids)
    return _row(ids, [False] * n, [False] * n, labels, "lm", -1)


class DigitRows(Dataset):
    """T2I or MMU rows over one split of the digits. Training rows draw a random caption /
    question / answer template each time; evaluation rows use fixed ones."""

    def __init__(self, space: TokenSpace, codes: torch.Tensor, labels, task: str, train: bool):
        if task not in ("t2i", "mmu"):
            raise ValueError(f"DigitRows serves t2i or mmu, not {task}")
        self.space, self.codes, self.labels = space, codes, torch.as_tensor(labels)
        self.task, self.train = task, train

    def __len__(self) -> int:
        return len(self.labels)

    def _template(self, i: int) -> int:
        return int(torch.randint(0, 1 << 30, ())) if self.train else i

    def __getitem__(self, i: int) -> dict:
        d = int(self.labels[i])
        if self.task == "t2i":
            return t2i_row(self.space, D.caption(d, self._template(i)), self.codes[i], self.codes.shape[1], d)
        return mmu_row(self.space, self.codes[i], D.question(self._template(i)), D.answer(d, self._template(i)), d)


class MMUPrompts(Dataset):
    """Evaluation prompts: image + fixed question, no answer (greedy decoding fills it in)."""

    def __init__(self, space: TokenSpace, codes: torch.Tensor, labels):
        self.space, self.codes, self.labels = space, codes, torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return mmu_row(self.space, self.codes[i], D.question(0), None, int(self.labels[i]))


class T2IPrompts(Dataset):
    """Evaluation prompts "a handwritten <digit>" with a fully masked image, n per digit."""

    def __init__(self, space: TokenSpace, n_tokens: int, per_digit: int):
        self.space, self.n_tokens, self.per_digit = space, n_tokens, per_digit

    def __len__(self) -> int:
        return 10 * self.per_digit

    def __getitem__(self, i: int) -> dict:
        d = i % 10
        return t2i_row(self.space, D.EVAL_CAPTION.format(d=d, name=D.DIGIT_NAMES[d]), None, self.n_tokens, d)


class LMRows(Dataset):
    """Fixed-length byte windows of a text: random offsets when training, a tiling otherwise."""

    def __init__(self, data: bytes, length: int, train: bool):
        if len(data) < length + 1:
            raise ValueError(f"text of {len(data)} bytes is shorter than one row of {length}")
        self.data, self.length, self.train = data, length, train

    def __len__(self) -> int:
        return len(self.data) // self.length

    def __getitem__(self, i: int) -> dict:
        if self.train:
            start = int(torch.randint(0, len(self.data) - self.length, ()))
        else:
            start = i * self.length
        return lm_row(self.data[start : start + self.length])


def collate_rows(rows: list[dict], pad_id: int) -> dict:
    """Right-pad rows to the longest; `valid` marks real tokens."""
    T = max(len(r["ids"]) for r in rows)
    B = len(rows)
    batch = {
        "ids": torch.full((B, T), pad_id, dtype=torch.long),
        "labels": torch.full((B, T), IGNORE_INDEX, dtype=torch.long),
        "is_image": torch.zeros(B, T, dtype=torch.bool),
        "cond": torch.zeros(B, T, dtype=torch.bool),
        "valid": torch.zeros(B, T, dtype=torch.bool),
    }
    for b, r in enumerate(rows):
        n = len(r["ids"])
        for k in ("ids", "labels", "is_image", "cond"):
            batch[k][b, :n] = r[k]
        batch["valid"][b, :n] = True
    batch["task"] = torch.stack([r["task"] for r in rows])
    batch["digit"] = torch.stack([r["digit"] for r in rows])
    return batch


def concat_batches(batches: list[dict], pad_id: int) -> dict:
    """Stack batches of different tasks along the batch dim, right-padding to the longest T."""
    T = max(b["ids"].shape[1] for b in batches)
    fill = {"ids": pad_id, "labels": IGNORE_INDEX, "is_image": False, "cond": False, "valid": False}
    out = {}
    for k, v in fill.items():
        out[k] = torch.cat([torch.nn.functional.pad(b[k], (0, T - b[k].shape[1]), value=v) for b in batches])
    out["task"] = torch.cat([b["task"] for b in batches])
    out["digit"] = torch.cat([b["digit"] for b in batches])
    return out
