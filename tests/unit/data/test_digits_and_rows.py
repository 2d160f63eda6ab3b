from __future__ import annotations

import numpy as np
import pytest
import torch

from modlab.data import digits as D
from modlab.data.image_tokenizer import PatchCodebook, PixelQuantizer, image_tokenizer_from_state
from modlab.data.rows import DigitRows, LMRows, collate_rows, concat_batches, lm_row, mmu_row, t2i_row
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TokenSpace
from modlab.errors import DataError


def test_split_is_fixed_disjoint_and_covers_all_digits():
    a, b = D.load_digit_splits(0), D.load_digit_splits.__wrapped__(0)
    assert {k: len(v.labels) for k, v in a.items()} == {"train": 1257, "val": 180, "test": 360}
    for k in a:
        np.testing.assert_array_equal(a[k].images, b[k].images)
    flat = {k: {v.images[i].tobytes() for i in range(len(v.labels))} for k, v in a.items()}
    # a handful of load_digits images are exact duplicates of each other; the split is by index
    assert len(flat["train"] & flat["test"]) <= 2
    assert all(set(v.labels.tolist()) == set(range(10)) for v in a.values())


def test_pixel_quantizer_with_17_levels_is_lossless():
    imgs = D.load_digit_splits(0)["test"].images
    q = PixelQuantizer(17)
    codes = q.encode(imgs)
    assert codes.shape == (len(imgs), 64) and codes.min() >= 0 and codes.max() <= 16
    torch.testing.assert_close(q.decode(codes), torch.as_tensor(imgs))


def test_patch_codebook_round_trips_through_its_state():
    imgs = D.load_digit_splits(0)["train"].images[:300]
    cb = PatchCodebook(codebook_size=16, patch=2).fit(imgs)
    codes = cb.encode(imgs)
    assert codes.shape == (300, 16) and codes.max() < 16
    err = (cb.decode(codes) - torch.as_tensor(imgs)).abs().mean()
    assert err < 2.0  # mean abs error in grey levels (0..16)
    again = image_tokenizer_from_state(cb.state_dict())
    torch.testing.assert_close(again.decode(codes), cb.decode(codes))


def test_answers_are_parsed_to_the_digit_they_name():
    assert D.answered_digit("it is a seven.") == 7
    assert D.answered_digit("the digit 3.") == 3
    assert D.answered_digit("seven or 3") == -1  # two digits named: counted wrong
    assert D.answered_digit("no idea") == -1
    assert D.answered_digit("someone") == -1  # "one" only as a word
    for d in range(10):
        for t in range(3):
            assert D.answered_digit(D.answer(d, t)) == d
        for t in range(5):
            assert D.digits_named(D.caption(d, t)) == {d}


def test_row_formats_follow_showo():
    sp = TokenSpace(17)
    codes = torch.arange(64) % 17
    r = t2i_row(sp, "a 3", codes, 64, 3)
    ids = r["ids"].tolist()
    assert ids[0] == sp.t2i and ids[1:4] == list(b"a 3") and ids[4] == sp.soi and ids[-1] == sp.eoi
    assert r["is_image"].sum() == 64 and r["is_image"][5:69].all() and r["cond"][1:4].all() and r["cond"].sum() == 3
    m = mmu_row(sp, codes, "q?", "it is a 3.", 3)
    ids = m["ids"].tolist()
    assert ids[:2] == [sp.mmu, sp.soi] and ids[66] == sp.eoi and ids[-1] == sp.eos
    # next-token labels on the answer and [EOS] only
    n_answer = len("it is a 3.") + 1
    assert (m["labels"][: -n_answer - 1] == IGNORE_INDEX).all()
    assert m["labels"][-n_answer - 1 : -1].tolist() == ids[-n_answer:]
    lm = lm_row(b"hello")
    assert lm["labels"].tolist() == list(b"ello") + [IGNORE_INDEX] and lm["task"] == TASK_ID["lm"]


def test_collate_and_concat_pad_with_invalid_positions():
    sp = TokenSpace(17)
    rows = [lm_row(b"abc"), lm_row(b"abcdef")]
    b = collate_rows(rows, sp.pad)
    assert b["ids"].shape == (2, 6) and b["valid"].sum() == 9 and (b["ids"][0, 3:] == sp.pad).all()
    c = concat_batches([b, collate_rows([lm_row(b"abcdefgh")], sp.pad)], sp.pad)
    assert c["ids"].shape == (3, 8) and c["valid"].sum() == 17 and (c["labels"][0, 3:] == IGNORE_INDEX).all()


def test_training_rows_vary_templates_and_eval_rows_do_not():
    sp = TokenSpace(17)
    split = D.load_digit_splits(0)["val"]
    codes = PixelQuantizer().encode(split.images)
    train = DigitRows(sp, codes, split.labels, "t2i", train=True)
    assert len({tuple(train[0]["ids"].tolist()) for _ in range(20)}) > 1
    ev = DigitRows(sp, codes, split.labels, "mmu", train=False)
    assert ev[0]["ids"].tolist() == ev[0]["ids"].tolist()


def test_corpus_is_offline_python_docs_and_splits_without_overlap():
    text = load_corpus()
    assert len(text) > 400_000 and "the" in text
    parts = split_corpus(text)
    assert sum(len(p) for p in parts.values()) == len(text.encode())
    rows = LMRows(parts["test"], 96, train=False)
    assert len(rows) > 100 and len(rows[0]["ids"]) == 96


def test_user_text_files_must_exist_and_not_be_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus([str(tmp_path / "missing.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="is empty"):
        load_corpus([str(empty)])
    ok = tmp_path / "ok.txt"
    ok.write_text("some text " * 100)
    assert load_corpus([str(ok)]).startswith("some text")
