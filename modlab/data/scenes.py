"""Digit scenes: a grid of cells (2x2 by default, 16x16 pixels), each a real 8x8 digit from one
split of `load_digits` or blank, with VQA-style questions (MMU) and GenEval-style prompts (T2I)
written from the scene's contents.

Every item is a pure function of (seed, split, task, index): `np.random.default_rng` seeded with
that tuple draws the question type or prompt category (balanced: index modulo the number of
kinds), the cells and the digit images, so a data set is reproducible without storing it and a
split only ever uses its own digits.

Questions have one exact answer (a numeral, "yes" / "no", "none" or a position name); prompts
carry what they ask for (`Prompt`), so a scorer can check any image against them
(modlab.evaluation.scene_scorers) and the training captions are checked against their own scenes
in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from modlab.data.digits import DIGIT_NAMES, DigitSplit

CELL = 8  # pixels per cell side (a load_digits image)
QUESTION_TYPES = ("position", "count", "presence", "compare", "sum")
PROMPT_CATEGORIES = ("single", "two", "position", "counting")
RELATIONS = ("above", "below", "left of", "right of")
SPLIT_ID = {"train": 0, "val": 1, "test": 2}
TASK_SEED = {"t2i": 0, "mmu": 1}
BLANK = -1

# Two phrasings per question type: training draws one, evaluation always uses the first.
QUESTION_TEMPLATES = {
    "position": ("what digit is {pos}?", "which digit sits {pos}?"),
    "count": ("how many digits?", "count the digits."),
    "presence": ("is there a {d}?", "does it contain a {d}?"),
    "compare": ("which is larger, {a} or {b}?", "larger digit: {a} or {b}?"),
    "sum": ("sum of the {row} row?", "add up the {row} row."),
}
RELATION_TEXT = {"above": "above", "below": "below", "left of": "left of", "right of": "right of"}


def row_names(grid: int) -> tuple[str, ...]:
    return ("top", "bottom") if grid == 2 else ("top", "middle", "bottom")


def col_names(grid: int) -> tuple[str, ...]:
    return ("left", "right") if grid == 2 else ("left", "center", "right")


def cell_name(grid: int, cell: int) -> str:
    """ "top left", "bottom right", ... (raster order)."""
    return f"{row_names(grid)[cell // grid]} {col_names(grid)[cell % grid]}"


def grid_of(cells: Sequence[int]) -> int:
    grid = int(round(len(cells) ** 0.5))
    if grid * grid != len(cells):
        raise ValueError(f"{len(cells)} cells do not form a square grid")
    return grid


def related(grid: int, a: int, b: int, relation: str) -> bool:
    """Whether cell `a` is `relation` cell `b`: the same column (above / below) or the same row
    (left of / right of), any distance apart."""
    (ra, ca), (rb, cb) = divmod(a, grid), divmod(b, grid)
    return {
        "above": ca == cb and ra < rb,
        "below": ca == cb and ra > rb,
        "left of": ra == rb and ca < cb,
        "right of": ra == rb and ca > cb,
    }[relation]


@dataclass(frozen=True)
class Scene:
    grid: int
    digits: tuple[int, ...]  # per cell, raster order; BLANK for an empty cell
    sources: tuple[int, ...]  # index of each cell's image in its split; BLANK for an empty cell

    def render(self, images: np.ndarray) -> np.ndarray:
        """The (8 grid, 8 grid) image; `images` are the split's digit images."""
        out = np.zeros((self.grid * CELL, self.grid * CELL), dtype=np.float32)
        for cell, src in enumerate(self.sources):
            if src != BLANK:
                r, c = divmod(cell, self.grid)
                out[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = images[src]
        return out

    @property
    def present(self) -> list[int]:
        return [d for d in self.digits if d != BLANK]


class Question(NamedTuple):
    qtype: str
    text: str
    answer: str


class Prompt(NamedTuple):
    """A T2I prompt and what it asks for. (A NamedTuple, not a dataclass: it rides in batches,
    which Lightning rebuilds field by field when moving them to a device.)"""

    category: str
    text: str
    digits: tuple[int, ...] = ()  # single: (d,); two / position: (a, b); counting: ()
    relation: str = ""  # position: digits[0] is `relation` digits[1]
    count: int = 0  # counting: how many digits

    def satisfied_by(self, cells: Sequence[int]) -> bool:
        """Whether a scene whose cells hold these digits (BLANK = empty) shows what was asked:
        exactly the digits named (single, two), the two digits in the named relation (position),
        or exactly `count` digits (counting)."""
        present = [d for d in cells if d != BLANK]
        if self.category == "single":
            return present == list(self.digits)
        if self.category == "two":
            return sorted(present) == sorted(self.digits)
        if self.category == "position":
            if sorted(present) != sorted(self.digits):
                return False
            a = next(i for i, d in enumerate(cells) if d == self.digits[0])
            b = next(i for i, d in enumerate(cells) if d == self.digits[1])
            return related(grid_of(cells), a, b, self.relation)
        if self.category == "counting":
            return len(present) == self.count
        raise ValueError(f"unknown prompt category '{self.category}'")


# ---- drawing scenes ------------------------------------------------------------------------


def item_rng(seed: int, split: str, task: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_ID[split], TASK_SEED[task], index])


def _by_label(split: DigitSplit) -> list[np.ndarray]:
    return [np.flatnonzero(split.labels == d) for d in range(10)]


def _scene(grid: int, cell_digits: dict[int, int], split: DigitSplit, rng: np.random.Generator) -> Scene:
    """A scene with the given digit in each listed cell, each drawn from that digit's images."""
    by_label = _by_label(split)
    digits, sources = [BLANK] * grid * grid, [BLANK] * grid * grid
    for cell, d in cell_digits.items():
        digits[cell], sources[cell] = d, int(rng.choice(by_label[d]))
    return Scene(grid, tuple(digits), tuple(sources))


def _random_digits(n: int, rng: np.random.Generator, distinct: bool = False) -> list[int]:
    return [int(d) for d in rng.choice(10, size=n, replace=not distinct)]


def _random_cells(grid: int, n: int, rng: np.random.Generator) -> list[int]:
    return [int(c) for c in rng.choice(grid * grid, size=n, replace=False)]


def _say(d: int, words: bool) -> str:
    """ "a 3" / "an 8" / "a three" / "an eight"."""
    name = DIGIT_NAMES[d] if words else str(d)
    return ("an " if name[0] in "8e" else "a ") + name


def draw_question(
    split: DigitSplit, grid: int, qtype: str, rng: np.random.Generator, template: int = 0
) -> tuple[Scene, Question]:
    """A scene and a question of type `qtype` about it."""
    n_cells = grid * grid
    fmt = QUESTION_TEMPLATES[qtype][template % 2]
    if qtype == "compare":  # two occupied cells holding different digits
        n = int(rng.integers(2, n_cells + 1))
        cells, digits = _random_cells(grid, n, rng), _random_digits(n, rng)
        while digits[0] == digits[1]:
            digits[1] = int(rng.integers(10))
        scene = _scene(grid, dict(zip(cells, digits)), split, rng)
        a, b = cells[0], cells[1]
        text = fmt.format(a=cell_name(grid, a), b=cell_name(grid, b))
        return scene, Question(qtype, text, cell_name(grid, a if digits[0] > digits[1] else b))
    n = int(rng.integers(1, n_cells + 1))
    scene = _scene(grid, dict(zip(_random_cells(grid, n, rng), _random_digits(n, rng))), split, rng)
    if qtype == "position":
        cell = int(rng.integers(n_cells))
        d = scene.digits[cell]
        return scene, Question(qtype, fmt.format(pos=cell_name(grid, cell)), "none" if d == BLANK else str(d))
    if qtype == "count":
        return scene, Question(qtype, fmt, str(len(scene.present)))
    if qtype == "presence":  # half the questions about a digit that is there, half about one that is not
        absent = sorted(set(range(10)) - set(scene.present))
        if rng.random() < 0.5:
            d, ans = int(rng.choice(scene.present)), "yes"
        else:
            d, ans = int(rng.choice(absent)), "no"
        return scene, Question(qtype, fmt.format(d=d), ans)
    if qtype == "sum":
        row = int(rng.integers(grid))
        total = sum(max(d, 0) for d in scene.digits[row * grid : (row + 1) * grid])
        return scene, Question(qtype, fmt.format(row=row_names(grid)[row]), str(total))
    raise ValueError(f"unknown question type '{qtype}' ({', '.join(QUESTION_TYPES)})")


def draw_prompt(
    split: DigitSplit, grid: int, category: str, rng: np.random.Generator, words: bool = False
) -> tuple[Scene, Prompt]:
    """A prompt of `category` and a scene that shows it. `words`: name digits as words."""
    if category == "single":
        d = _random_digits(1, rng)[0]
        return _scene(grid, {_random_cells(grid, 1, rng)[0]: d}, split, rng), Prompt(category, _say(d, words), (d,))
    if category == "two":
        a, b = _random_digits(2, rng, distinct=True)
        scene = _scene(grid, dict(zip(_random_cells(grid, 2, rng), (a, b))), split, rng)
        return scene, Prompt(category, f"{_say(a, words)} and {_say(b, words)}", (a, b))
    if category == "position":
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        pairs = [(i, j) for i in range(grid * grid) for j in range(grid * grid) if related(grid, i, j, relation)]
        i, j = pairs[int(rng.integers(len(pairs)))]
        a, b = _random_digits(2, rng, distinct=True)
        text = f"{_say(a, words)} {RELATION_TEXT[relation]} {_say(b, words)}"
        return _scene(grid, {i: a, j: b}, split, rng), Prompt(category, text, (a, b), relation)
    if category == "counting":
        n = int(rng.integers(1, grid * grid + 1))
        scene = _scene(grid, dict(zip(_random_cells(grid, n, rng), _random_digits(n, rng))), split, rng)
        return scene, Prompt(category, f"{DIGIT_NAMES[n]} digit{'s' if n > 1 else ''}", count=n)
    raise ValueError(f"unknown prompt category '{category}' ({', '.join(PROMPT_CATEGORIES)})")


def scene_item(split: DigitSplit, split_name: str, grid: int, task: str, index: int, seed: int, train: bool):
    """Item `index` of a split: (scene, Question) for mmu, (scene, Prompt) for t2i. Kinds are
    balanced (index modulo their number); training items vary the phrasing, evaluation items
    use the first phrasing and numerals."""
    rng = item_rng(seed, split_name, task, index)
    if task == "mmu":
        template = int(rng.integers(2)) if train else 0
        return draw_question(split, grid, QUESTION_TYPES[index % len(QUESTION_TYPES)], rng, template)
    words = bool(rng.integers(2)) if train else False
    return draw_prompt(split, grid, PROMPT_CATEGORIES[index % len(PROMPT_CATEGORIES)], rng, words)
