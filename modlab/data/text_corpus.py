"""An English text corpus that exists offline: Python's own documentation (`pydoc_data.topics`,
~465k characters), or the user's text files. Split by contiguous blocks into train/val/test."""

from __future__ import annotations

from pathlib import Path

from modlab.errors import DataError


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_corpus(files: list[str] | None = None) -> str:
    """The user's files joined, or the pydoc corpus when none are given."""
    if not files:
        return pydoc_text()
    parts = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise DataError(f"text file '{f}' does not exist")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise DataError(f"text file '{f}' is empty")
        parts.append(text)
    return "\n\n".join(parts)


def split_corpus(text: str, val_fraction: float = 0.05, test_fraction: float = 0.05) -> dict[str, bytes]:
    data = text.encode("utf-8")
    n = len(data)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    return {
        "train": data[: n - n_val - n_test],
        "val": data[n - n_val - n_test : n - n_test],
        "test": data[n - n_test :],
    }


def corpus_tokens(files: list[str] | None = None, tokenizer=None) -> dict[str, bytes | list[int]]:
    """The train / val / test splits as token sequences: UTF-8 bytes (the byte-level LMs), or
    the ids of a model's own tokenizer (`tokenizer.kind != "bytes"`)."""
    splits = split_corpus(load_corpus(files))
    if tokenizer is None or tokenizer.kind == "bytes":
        return splits
    return {k: tokenizer.encode(v.decode("utf-8", errors="replace")) for k, v in splits.items()}
