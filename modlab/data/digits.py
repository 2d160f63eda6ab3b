"""Real handwritten digits: scikit-learn's `load_digits` (1,797 images, 8x8, grey levels 0..16).

A fixed, seeded, stratified train / val / test split; captions and MMU question/answer texts
from several templates that name the digit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CAPTION_TEMPLATES = (
    "a handwritten {name}",
    "the digit {d}",
    "an image of the number {name}",
    "a picture of a {d}",
    "handwritten digit {name}",
)
# The prompt used to sample "digit d" images at evaluation time.
EVAL_CAPTION = CAPTION_TEMPLATES[0]

QUESTION_TEMPLATES = (
    "what digit is this?",
    "which number is written here?",
    "what is shown in the image?",
)
ANSWER_TEMPLATES = ("it is a {name}.", "the digit {d}.", "{name}")


@dataclass(frozen=True)
class DigitSplit:
    images: np.ndarray  # (N, 8, 8) float32 in [0, 16]
    labels: np.ndarray  # (N,) int64


@lru_cache(maxsize=4)
def load_digit_splits(seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> dict[str, DigitSplit]:
    """Stratified split of the 1,797 real digits; the same seed always gives the same split."""
    # scikit-learn / SciPy take a second to import: only when this runs
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)
    labels = data.target.astype(np.int64)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    val_size = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_size, random_state=seed, stratify=labels[rest])
    return {name: DigitSplit(images[s], labels[s]) for name, s in (("train", train), ("val", val), ("test", test))}


def caption(digit: int, template: int) -> str:
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(d=digit, name=DIGIT_NAMES[digit])


def question(template: int) -> str:
    return QUESTION_TEMPLATES[template % len(QUESTION_TEMPLATES)]


def answer(digit: int, template: int) -> str:
    return ANSWER_TEMPLATES[template % len(ANSWER_TEMPLATES)].format(d=digit, name=DIGIT_NAMES[digit])


_DIGIT_PATTERN = re.compile(r"\b(" + "|".join(DIGIT_NAMES) + r"|[0-9])\b")


def digits_named(text: str) -> set[int]:
    """Every digit a text names, as a word ("seven") or a numeral ("7")."""
    found = set()
    for m in _DIGIT_PATTERN.finditer(text.lower()):
        w = m.group(1)
        found.add(int(w) if w.isdigit() else DIGIT_NAMES.index(w))
    return found


def answered_digit(text: str) -> int:
    """The digit an answer names, or -1 when it names none or more than one (counted wrong)."""
    found = digits_named(text)
    return found.pop() if len(found) == 1 else -1
