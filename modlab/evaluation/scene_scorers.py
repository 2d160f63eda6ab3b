"""Automatic scorers for digit scenes (modlab.data.scenes).

- MMU: exact match of the greedy answer with the expected one, after normalising case, spaces
  and end punctuation ("Top left." == "top left"; "13" != "3").
- T2I: read a generated scene cell by cell, as blank (mean grey level below `BLANK_MEAN_GREY`)
  or as the digit the reference classifier sees, and check the cells against the prompt
  (`Prompt.satisfied_by`: exactly the digits asked for, in the relation asked for, or exactly
  the count asked for).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from modlab.data.scenes import BLANK, CELL, Prompt

# Real load_digits digits have a mean grey level of at least 2.9 (of 16); a blank cell decoded
# from the patch codebook is ~0.01. Below 1.0 a cell is blank: too little ink for a digit.
BLANK_MEAN_GREY = 1.0


def split_cells(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, 8 grid, 8 grid) scenes -> (N, grid * grid, 8, 8) cells in raster order."""
    n = len(images)
    return images.reshape(n, grid, CELL, grid, CELL).permute(0, 1, 3, 2, 4).reshape(n, grid * grid, CELL, CELL)


def blank_cells(cells: torch.Tensor) -> torch.Tensor:
    """(..., 8, 8) cells -> (...) True where a cell holds too little ink to be a digit."""
    return cells.float().mean((-2, -1)) < BLANK_MEAN_GREY


@torch.no_grad()
def read_cells(classifier, images: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a scene shows: (N, grid * grid) labels (the classifier's digit, BLANK for a blank
    cell) and the classifier's penultimate features of the non-blank cells (M, D)."""
    cells = split_cells(images.float(), grid)
    blank = blank_cells(cells)
    inked = cells[~blank]
    labels = torch.full(blank.shape, BLANK, dtype=torch.long, device=images.device)
    if len(inked) == 0:
        return labels, torch.zeros(0, classifier.out.in_features, device=images.device)
    features = classifier.features(inked)
    labels[~blank] = classifier.out(features).argmax(-1)
    return labels, features


def prompts_satisfied(prompts: Sequence[Prompt], cell_labels: torch.Tensor) -> torch.Tensor:
    """(N,) booleans: scene i shows what prompt i asked for."""
    return torch.tensor([p.satisfied_by(row) for p, row in zip(prompts, cell_labels.tolist())])


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip(".!?").strip()


def answers_correct(answers: Sequence[str], expected: Sequence[str]) -> torch.Tensor:
    """(N,) booleans: exact match after normalisation."""
    return torch.tensor([normalize_answer(a) == normalize_answer(e) for a, e in zip(answers, expected)])
