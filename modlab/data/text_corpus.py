"""An English text corpus that exists offline: Python's own documentation (`pydoc_data.topics`,
~465k characters), or the user's files: plain text, or JSONL with one document a line in a text
field (`data.lm_format=jsonl data.text_field=text`). Split by contiguous blocks into train/val/test."""

from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

from modlab.errors import DataError


def pydoc_text() -> str:
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_jsonl(path: Path):
    """(line number, object) of each non-blank line of a JSONL file; a line that is not a JSON
    object is a one-line DataError naming the file and line."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {n}: a JSON object is expected, got {type(obj).__name__}")
            yield n, obj


def jsonl_documents(path: Path, text_field: str) -> list[str]:
    docs = []
    for n, obj in read_jsonl(path):
        if text_field not in obj:
            raise DataError(f"{path} line {n}: no '{text_field}' field (data.text_field={text_field})")
        if not isinstance(obj[text_field], str):
            raise DataError(f"{path} line {n}: field '{text_field}' is not a string")
        docs.append(obj[text_field])
    return docs


def load_corpus(files: list[str] | None = None, fmt: str = "text", text_field: str = "text") -> str:
    """The user's files joined (documents of JSONL files too), or the pydoc corpus when none are given."""
    if not files:
        return pydoc_text()
    parts = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise DataError(f"text file '{f}' does not exist")
        if fmt == "jsonl":
            text = "\n\n".join(jsonl_documents(path, text_field))
        else:
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


def corpus_tokens(
    files: list[str] | None = None, tokenizer=None, fmt: str = "text", text_field: str = "text"
) -> dict[str, bytes | list[int]]:
    """The train / val / test splits as token sequences: UTF-8 bytes (the byte-level LMs), or
    the ids of a model's own tokenizer (`tokenizer.kind != "bytes"`)."""
    splits = split_corpus(load_corpus(files, fmt, text_field))
    if tokenizer is None or tokenizer.kind == "bytes":
        return splits
    return {k: tokenizer.encode(v.decode("utf-8", errors="replace")) for k, v in splits.items()}
