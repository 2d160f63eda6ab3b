"""Token rows for the three tasks, and their collation into padded batches.

A row is a dict of 1-D tensors of one length T:
    ids       token ids
    labels    the id to predict *at* each position (IGNORE_INDEX where there is no loss);
              for next-token tasks labels[i] = ids[i + 1]; T2I labels are filled in by masking
    is_image  True on image-code positions (omni-attention lets these see each other)
    cond      True on the T2I caption (dropped for classifier-free guidance)
and two scalars: `task` (TASK_ID) and `digit` (the class, -1 for LM rows). Evaluation rows of
digit scenes carry more per-row fields (the expected answer, the prompt, the real scene's codes):
collation stacks extra tensors and keeps anything else as a list.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from modlab.data import digits as D
from modlab.data import scenes as S
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


def lm_row(chunk, prefix: list[int] | tuple = ()) -> dict:
    """A text window: `prefix` (the tokenizer's special tokens before a text, e.g. <bos>) then the
    chunk; every position predicts the next token, so with a prefix every chunk token is a label."""
    ids = list(prefix) + list(chunk)
    labels = ids[1:] + [IGNORE_INDEX]
    labels[: max(0, len(prefix) - 1)] = [IGNORE_INDEX] * max(0, len(prefix) - 1)
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


class SceneRows(Dataset):
    """T2I or MMU rows of `n` digit scenes drawn from one split (modlab.data.scenes): a scene
    with a prompt that describes it (t2i) or a question about it and its answer (mmu)."""

    def __init__(
        self,
        space: TokenSpace,
        tokenizer,
        split: D.DigitSplit,
        split_name: str,
        grid: int,
        n: int,
        task: str,
        train: bool,
        seed: int,
    ):
        if task not in ("t2i", "mmu"):
            raise ValueError(f"SceneRows serves t2i or mmu, not {task}")
        self.space, self.split, self.split_name = space, split, split_name
        self.grid, self.n, self.task, self.train, self.seed = grid, n, task, train, seed
        # Both tokenizers code each pixel / patch on its own and patches never straddle cells,
        # so a scene's codes are its cells' codes laid out: tokenize the digits once (encoding
        # each scene's image took ~5 ms a row, as much as the model's share of a step).
        self.digit_codes = tokenizer.encode(split.images)
        self.blank_codes = tokenizer.encode(np.zeros((1, S.CELL, S.CELL), dtype=np.float32))[0]

    def __len__(self) -> int:
        return self.n

    def item(self, i: int):
        return S.scene_item(self.split, self.split_name, self.grid, self.task, i, self.seed, self.train)

    def codes(self, scene: S.Scene) -> torch.Tensor:
        """The scene's codes in raster order over the whole image (as encoding its render gives)."""
        cells = torch.stack([self.blank_codes if s == S.BLANK else self.digit_codes[s] for s in scene.sources])
        side = int(round(cells.shape[1] ** 0.5))  # tokens per cell side
        return cells.view(self.grid, self.grid, side, side).permute(0, 2, 1, 3).reshape(-1)

    def __getitem__(self, i: int) -> dict:
        scene, text = self.item(i)
        codes = self.codes(scene)
        if self.task == "t2i":
            return t2i_row(self.space, text.text, codes, len(codes))
        return mmu_row(self.space, codes, text.text, text.answer)


class SceneMMUPrompts(SceneRows):
    """Evaluation questions about test scenes, without answers; each row carries its question
    type id (`qtype`) and expected answer (`answer`)."""

    def __init__(self, space, tokenizer, split, grid: int, n: int, seed: int, split_name: str = "test"):
        super().__init__(space, tokenizer, split, split_name, grid, n, "mmu", train=False, seed=seed)

    def __getitem__(self, i: int) -> dict:
        scene, q = self.item(i)
        row = mmu_row(self.space, self.codes(scene), q.text, None)
        return {**row, "qtype": torch.tensor(S.QUESTION_TYPES.index(q.qtype)), "answer": q.answer}

    def question_length(self, i: int) -> int:
        """Text tokens of row i's question: rows with equal ones have equal prompt lengths
        (greedy decoding takes rows of one length together), found without tokenizing images."""
        return len(self.space.encode_text(self.item(i)[1].text))


class SceneT2IPrompts(SceneRows):
    """Evaluation prompts with a fully masked image; each row carries its `Prompt` (`prompt`),
    category id (`category`) and the codes of a real test scene that shows it (`scene_codes`,
    the scorer's ceiling after the tokenizer's round trip)."""

    def __init__(self, space, tokenizer, split, grid: int, per_category: int, seed: int, split_name: str = "test"):
        super().__init__(
            space,
            tokenizer,
            split,
            split_name,
            grid,
            per_category * len(S.PROMPT_CATEGORIES),
            "t2i",
            train=False,
            seed=seed,
        )

    def __getitem__(self, i: int) -> dict:
        scene, prompt = self.item(i)
        codes = self.codes(scene)
        row = t2i_row(self.space, prompt.text, None, len(codes))
        return {
            **row,
            "prompt": prompt,
            "category": torch.tensor(S.PROMPT_CATEGORIES.index(prompt.category)),
            "scene_codes": codes,
        }


class LMRows(Dataset):
    """Fixed-length windows of a text (bytes or token ids): random offsets when training, a
    tiling otherwise. Each row is `prefix` + `length - len(prefix)` tokens of text."""

    def __init__(self, data, length: int, train: bool, prefix: list[int] | tuple = ()):
        self.span = length - len(prefix)  # text tokens per row
        if self.span < 1:
            raise ValueError(f"rows of {length} tokens leave no room for text after {len(prefix)} prefix tokens")
        if len(data) < length + 1:
            raise ValueError(f"text of {len(data)} tokens is shorter than one row of {length}")
        self.data, self.length, self.train, self.prefix = data, length, train, list(prefix)

    def __len__(self) -> int:
        return len(self.data) // self.span

    def __getitem__(self, i: int) -> dict:
        if self.train:
            start = int(torch.randint(0, len(self.data) - self.span, ()))
        else:
            start = i * self.span
        return lm_row(self.data[start : start + self.span], self.prefix)


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
    if "kind" in rows[0]:  # what each token is (Hugging Face unified rows: modlab.models.hf_unified)
        batch["kind"] = torch.zeros(B, T, dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r["ids"])
        for k in ("ids", "labels", "is_image", "cond", "kind"):
            if k in batch:
                batch[k][b, :n] = r[k]
        batch["valid"][b, :n] = True
    batch["task"] = torch.stack([r["task"] for r in rows])
    batch["digit"] = torch.stack([r["digit"] for r in rows])
    if any("pixels" in r for r in rows):  # images a vision encoder reads (Janus MMU rows), in row order
        batch["pixels"] = torch.stack([r["pixels"] for r in rows if "pixels" in r])
    for k in rows[0].keys() - batch.keys():  # per-row extras of evaluation rows
        values = [r[k] for r in rows]
        batch[k] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


def same_length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of indices whose rows have one length (greedy decoding needs unpadded prompts);
    in order of first appearance, so the batches are reproducible."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


class PreBatched(Dataset):
    """A data set whose items are whole batches of another (lists of rows): load with
    batch_size=1 and `collate_prebatched`. Unlike a custom batch sampler it shards over DDP
    processes like any data set."""

    def __init__(self, rows: Dataset, batches: list[list[int]]):
        self.rows, self.batches = rows, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> list[dict]:
        return [self.rows[i] for i in self.batches[j]]


def collate_prebatched(items: list[list[dict]], pad_id: int) -> dict:
    return collate_rows([row for batch in items for row in batch], pad_id)


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


def left_pad(rows: list[dict], pad_id: int) -> dict:
    """Prompt rows padded on the left (so every row ends where generation starts), with `valid`."""
    n = max(len(r["ids"]) for r in rows)
    out: dict = {}
    for key in ("ids", "kind", "cond", "is_image"):
        fill = pad_id if key == "ids" else 0
        out[key] = torch.stack([F.pad(r[key], (n - len(r[key]), 0), value=fill) for r in rows])
    out["valid"] = torch.stack(
        [F.pad(torch.ones(len(r["ids"]), dtype=torch.bool), (n - len(r["ids"]), 0)) for r in rows]
    )
    out["task"] = torch.stack([r["task"] for r in rows])
    out["digit"] = torch.stack([r["digit"] for r in rows])
    if any("pixels" in r for r in rows):  # the images a vision encoder reads, in row order (Janus MMU)
        out["pixels"] = torch.stack([r["pixels"] for r in rows if "pixels" in r])
    return out
