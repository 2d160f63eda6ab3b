"""Text data as users have it (modlab.data.instructions, modlab.data.text_corpus): Alpaca records
become rows whose loss is on the response only, through the model's chat template or Alpaca's
plain template; JSONL documents join the corpus; every malformed line is a one-line DataError
naming the file and line."""

from __future__ import annotations

import json

import pytest
from helpers import save_tiny_tokenizer, write_alpaca

from modlab.data.config import DataConfig
from modlab.data.instructions import (
    PROMPT_INPUT,
    PROMPT_NO_INPUT,
    Instruction,
    instruction_row,
    instruction_splits,
    read_instructions,
)
from modlab.data.text_corpus import load_corpus
from modlab.data.text_tokenizer import ByteTokenizer, HFTokenizer
from modlab.data.tokens import IGNORE_INDEX
from modlab.errors import ConfigError, DataError
from modlab.training.config import EvalConfig
from modlab.training.text_datamodule import TextDataModule


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(save_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


def response_of(row) -> list[int]:
    """The tokens the loss is on (labels[i] is the token at i + 1)."""
    return [int(t) for t in row["labels"] if t != IGNORE_INDEX]


def test_plain_template_and_loss_on_the_response_only():
    tok = ByteTokenizer()
    rec = Instruction("Add the numbers.", "2 and 3", "5")
    row = instruction_row(tok, rec, 1024)
    prompt = PROMPT_INPUT.format(instruction="Add the numbers.", input="2 and 3")
    assert tok.decode(row["ids"]) == prompt + "5"
    assert tok.decode(response_of(row)) == "5"  # no EOS for a byte-level model
    assert row["labels"][len(prompt) - 1] == ord("5") and (row["labels"][: len(prompt) - 1] == IGNORE_INDEX).all()
    no_input = instruction_row(tok, Instruction("Say hi.", "", "hi"), 1024)
    assert tok.decode(no_input["ids"]) == PROMPT_NO_INPUT.format(instruction="Say hi.") + "hi"


def test_chat_template_and_eos(chat_tokenizer):
    row = instruction_row(chat_tokenizer, Instruction("Add the numbers.", "2 and 3", "5"), 1024)
    assert chat_tokenizer.decode(row["ids"]) == "<|user|>Add the numbers.\n\n2 and 3\n<|assistant|>5<eos>"
    assert chat_tokenizer.decode(response_of(row)) == "5<eos>"


def test_a_row_is_cut_at_max_length_and_one_without_a_response_left_out():
    tok = ByteTokenizer()
    rec = Instruction("Say hi.", "", "hello there")
    n_prompt = len(PROMPT_NO_INPUT.format(instruction="Say hi."))
    cut = instruction_row(tok, rec, n_prompt + 3)
    assert len(cut["ids"]) == n_prompt + 3 and tok.decode(response_of(cut)) == "hel"
    assert instruction_row(tok, rec, n_prompt) is None


def test_splits_are_contiguous_with_at_least_one_record_each(tmp_path):
    splits, dropped = instruction_splits([str(write_alpaca(tmp_path / "a.jsonl", 40))], ByteTokenizer(), 512)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"]), dropped) == (36, 2, 2, 0)
    assert "number 39" in ByteTokenizer().decode(splits["test"][-1]["ids"])
    with pytest.raises(DataError, match="at least 3"):
        instruction_splits([str(write_alpaca(tmp_path / "b.jsonl", 2))], ByteTokenizer(), 512)


def test_a_json_list_file_is_read_too(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "output": "d"}]))
    assert read_instructions([str(path)]) == [Instruction("a", "", "b"), Instruction("c", "", "d")]
    path.write_text(json.dumps([{"instruction": "a", "input": ""}]))
    with pytest.raises(DataError, match="record 1: no 'output' field"):
        read_instructions([str(path)])


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": ""}\n', "line 2: no 'output'"),
        ('{"input": "", "output": "b"}\n', "line 1: no 'instruction'"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', "line 2: not valid JSON"),
        ('{"instruction": "a", "output": 3}\n', "line 1: field 'output' is not a string"),
        ('["a", "b"]\n', "record 1: a JSON object is expected"),
        ('[{"instruction": "a", "output": "b"},\n oops]\n', "line 2: not valid JSON"),
        ("\n\n", "has no records"),
    ],
)
def test_bad_instruction_files_are_one_line_errors_naming_file_and_line(tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=needle) as e:
        read_instructions([str(path)])
    assert "\n" not in str(e.value) and ("bad.jsonl" in str(e.value))


def test_jsonl_documents_join_the_corpus_and_a_missing_field_names_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first doc"}\n\n{"body": "x", "text": "second doc"}\n')
    assert load_corpus([str(path)], "jsonl") == "first doc\n\nsecond doc"
    path.write_text('{"text": "first doc"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"docs.jsonl line 2: no 'text' field \(data.text_field=text\)"):
        load_corpus([str(path)], "jsonl")
    with pytest.raises(DataError, match="line 1: no 'body' field"):
        load_corpus([str(path)], "jsonl", text_field="body")


def test_the_data_module_serves_instruction_rows_padded(tmp_path):
    cfg = DataConfig(
        name="text",
        lm_format="alpaca",
        lm_files=[str(write_alpaca(tmp_path / "a.jsonl"))],
        lm_length=256,
        batch_size={"lm": 4},
    )
    dm = TextDataModule(cfg, EvalConfig(), ByteTokenizer())
    b = next(iter(dm.train_dataloader()))
    assert b["ids"].shape[0] == 4 and not b["valid"].all()  # rows of different lengths, right-padded
    assert ((b["labels"] != IGNORE_INDEX) <= b["valid"]).all()
    assert len(dm.test_dataloader().dataset) == 2
    assert dm.prompts(2, 16)[0].shape == (1, 16)


def test_formats_need_files():
    with pytest.raises(ConfigError, match="data.lm_format=alpaca reads your files"):
        DataConfig(name="text", lm_format="alpaca")
    with pytest.raises(ConfigError, match="data.lm_format 'csv' is unknown"):
        DataConfig(name="text", lm_format="csv", lm_files=["x"])
