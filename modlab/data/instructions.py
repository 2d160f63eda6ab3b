"""Instruction data in Alpaca form (`data.lm_format=alpaca`): records with `instruction`, an
optional `input` and `output`, from local JSONL files (one record a line) or JSON files holding a
list of records (as Stanford Alpaca's alpaca_data.json does). The Router-Tuning recipe tunes on
1,000 of them.

Each record becomes one row: the prompt, then the response; the next-token loss is on the
response (and the end-of-sequence token, where the tokenizer has one) only. The prompt is the
model's own chat template (a user turn holding the instruction and the input, and the generation
prompt) when its tokenizer has one; otherwise the fixed plain template of Stanford Alpaca
(`PROMPT_INPUT` / `PROMPT_NO_INPUT`), which is also what byte-level models (and the tiny test
models, which ship no tokenizer) get. Rows longer than `max_length` tokens are cut at the end; a
row whose response is cut away entirely has nothing to learn and is left out (and counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from modlab.data.text_corpus import read_jsonl
from modlab.data.tokens import IGNORE_INDEX, TASK_ID
from modlab.errors import DataError

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
REQUIRED, OPTIONAL = ("instruction", "output"), ("input",)


@dataclass
class Instruction:
    instruction: str
    input: str
    output: str


class ListRows(Dataset):
    """Rows held in a list (instruction rows)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _records(path: Path):
    """(where, object) of each record: 'line N' of a JSONL file, 'record N' of a JSON list."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith("["):
        try:
            items = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
        for n, obj in enumerate(items, 1):
            if not isinstance(obj, dict):
                raise DataError(f"{path} record {n}: a JSON object is expected, got {type(obj).__name__}")
            yield f"record {n}", obj
        return
    for n, obj in read_jsonl(path):
        yield f"line {n}", obj


def read_instructions(files: list[str]) -> list[Instruction]:
    """Every record of the files, in order; a missing field, a field that is not a string or a
    malformed line is a one-line DataError naming the file and line."""
    out = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise DataError(f"instruction file '{f}' does not exist")
        n_before = len(out)
        for where, obj in _records(path):
            for key in REQUIRED:
                if key not in obj:
                    raise DataError(
                        f"{path} {where}: no '{key}' field (an Alpaca record has instruction, input, output)"
                    )
            for key in REQUIRED + OPTIONAL:
                if key in obj and not isinstance(obj[key], str):
                    raise DataError(f"{path} {where}: field '{key}' is not a string")
            out.append(Instruction(obj["instruction"], obj.get("input", ""), obj["output"]))
        if len(out) == n_before:
            raise DataError(f"instruction file '{f}' has no records")
    return out


def has_chat_template(tokenizer) -> bool:
    return getattr(getattr(tokenizer, "tok", None), "chat_template", None) is not None


def prompt_text(tokenizer, record: Instruction) -> str:
    """The prompt of a record: the model's chat template, or Alpaca's plain template."""
    if has_chat_template(tokenizer):
        user = record.instruction + (f"\n\n{record.input}" if record.input else "")
        return tokenizer.tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    template = PROMPT_INPUT if record.input else PROMPT_NO_INPUT
    return template.format(instruction=record.instruction, input=record.input)


def eos_ids(tokenizer) -> list[int]:
    eos = getattr(getattr(tokenizer, "tok", None), "eos_token_id", None)
    return [eos] if isinstance(eos, int) else []


def instruction_row(tokenizer, record: Instruction, max_length: int) -> dict | None:
    """One row (ids, labels and the fields collate_rows expects); None when the cut leaves no response."""
    prompt = tokenizer.encode(prompt_text(tokenizer, record))
    prefix = list(getattr(tokenizer, "prefix", []))  # <bos>, unless a chat template wrote it already
    if prompt[: len(prefix)] != prefix:
        prompt = prefix + prompt
    ids = (prompt + tokenizer.encode(record.output) + eos_ids(tokenizer))[:max_length]
    if len(ids) <= len(prompt):
        return None
    labels = [IGNORE_INDEX] * len(ids)
    for i in range(len(prompt) - 1, len(ids) - 1):  # position i predicts token i + 1 of the response
        labels[i] = ids[i + 1]
    n = len(ids)
    return {
        "ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "is_image": torch.zeros(n, dtype=torch.bool),
        "cond": torch.zeros(n, dtype=torch.bool),
        "task": torch.tensor(TASK_ID["lm"]),
        "digit": torch.tensor(-1),
    }


def instruction_splits(
    files: list[str], tokenizer, max_length: int, val_fraction: float = 0.05, test_fraction: float = 0.05
) -> tuple[dict[str, list[dict]], int]:
    """The rows split by contiguous blocks into train / val / test (at least one record each),
    and how many records were left out because their response did not fit in max_length."""
    records = read_instructions(files)
    n = len(records)
    if n < 3:
        raise DataError(f"instruction data has {n} record(s): train, val and test need at least 3")
    n_test, n_val = max(1, int(n * test_fraction)), max(1, int(n * val_fraction))
    parts = {"train": records[: n - n_val - n_test], "val": records[n - n_val - n_test : n - n_test]}
    parts["test"] = records[n - n_test :]
    splits, dropped = {}, 0
    for name, recs in parts.items():
        rows = [instruction_row(tokenizer, r, max_length) for r in recs]
        dropped += sum(r is None for r in rows)
        splits[name] = [r for r in rows if r is not None]
        if not splits[name]:
            raise DataError(
                f"no {name} instruction fits in data.lm_length={max_length} tokens with its response "
                "(raise data.lm_length)"
            )
    return splits, dropped
