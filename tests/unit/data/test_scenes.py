"""Digit scenes: seeded, split-pure scenes; questions whose answers match the scene; prompts that
their own training scenes satisfy; codes laid out as the tokenizer would code the whole image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modlab.data import scenes as S
from modlab.data.config import DataConfig
from modlab.data.digits import DIGIT_NAMES, load_digit_splits
from modlab.data.image_tokenizer import PatchCodebook, PixelQuantizer
from modlab.data.rows import (
    PreBatched,
    SceneMMUPrompts,
    SceneRows,
    SceneT2IPrompts,
    collate_prebatched,
    collate_rows,
    same_length_batches,
)
from modlab.data.tokens import TokenSpace
from modlab.errors import ConfigError

SPLITS = load_digit_splits(0)


def items(split: str, task: str, n: int, grid: int = 2, seed: int = 0, train: bool = True):
    return [S.scene_item(SPLITS[split], split, grid, task, i, seed, train) for i in range(n)]


def test_items_are_reproducible_and_depend_on_the_seed():
    a, b = items("train", "mmu", 20), items("train", "mmu", 20)
    assert a == b
    assert a != items("train", "mmu", 20, seed=1)
    assert items("test", "t2i", 8) != items("val", "t2i", 8)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("grid", [2, 3])
def test_scenes_use_only_their_own_split(split, grid):
    images, labels = SPLITS[split].images, SPLITS[split].labels
    for scene, _ in items(split, "mmu", 40, grid) + items(split, "t2i", 40, grid):
        img = scene.render(images)
        assert img.shape == (8 * grid, 8 * grid)
        for cell, (d, src) in enumerate(zip(scene.digits, scene.sources)):
            r, c = divmod(cell, grid)
            block = img[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
            if d == S.BLANK:
                assert src == S.BLANK and not block.any()
            else:
                assert labels[src] == d
                np.testing.assert_array_equal(block, images[src])


def test_question_types_are_balanced_and_answers_match_the_scene():
    drawn = items("train", "mmu", 500) + items("test", "mmu", 100, train=False)
    types = [q.qtype for _, q in drawn]
    assert types[:5] == list(S.QUESTION_TYPES) and all(types.count(t) == 120 for t in S.QUESTION_TYPES)
    names = [S.cell_name(2, c) for c in range(4)]
    assert names == ["top left", "top right", "bottom left", "bottom right"]
    yes = 0
    for scene, q in drawn:
        present = [d for d in scene.digits if d >= 0]
        if q.qtype == "count":
            assert q.answer == str(len(present))
        elif q.qtype == "presence":
            d = int(q.text.split(" a ")[-1].rstrip("?"))
            assert q.answer == ("yes" if d in present else "no")
            yes += q.answer == "yes"
        elif q.qtype == "position":
            d = scene.digits[next(i for i, n in enumerate(names) if n in q.text)]
            assert q.answer == ("none" if d < 0 else str(d))
        elif q.qtype == "sum":
            row = 0 if "top" in q.text else 1
            assert q.answer == str(sum(max(d, 0) for d in scene.digits[2 * row : 2 * row + 2]))
        else:  # compare: the named cell holds the larger of two different digits
            a, b = [i for i, n in enumerate(names) if n in q.text]
            assert scene.digits[a] >= 0 and scene.digits[b] >= 0 and scene.digits[a] != scene.digits[b]
            assert q.answer == names[a if scene.digits[a] > scene.digits[b] else b]
    assert 40 <= yes <= 80  # of 120 presence questions, about half are "yes"


def test_training_prompts_describe_their_scenes():
    drawn = items("train", "t2i", 400) + items("train", "t2i", 90, grid=3)
    assert [p.category for _, p in drawn[:4]] == list(S.PROMPT_CATEGORIES)
    for scene, prompt in drawn:
        assert prompt.satisfied_by(scene.digits), (scene, prompt)
    # evaluation prompts name digits by numerals ("a 3 above a 7"; counting says "three digits")
    for _, p in items("test", "t2i", 40, train=False):
        if p.category != "counting":
            assert not any(name in p.text.split() for name in DIGIT_NAMES), p.text


def test_prompts_check_exact_content_and_relations():
    above = S.Prompt("position", "a 3 above a 7", (3, 7), "above")
    assert above.satisfied_by((3, -1, 7, -1)) and above.satisfied_by((-1, 3, -1, 7))
    assert not above.satisfied_by((7, -1, 3, -1))  # upside down
    assert not above.satisfied_by((3, 7, -1, -1))  # side by side
    assert not above.satisfied_by((3, -1, 7, 1))  # an extra digit
    left = S.Prompt("position", "a 1 left of a 2", (1, 2), "left of")
    assert left.satisfied_by((-1, -1, 1, 2)) and not left.satisfied_by((2, 1, -1, -1))
    assert S.Prompt("single", "a 4", (4,)).satisfied_by((-1, -1, 4, -1))
    assert not S.Prompt("single", "a 4", (4,)).satisfied_by((-1, -1, 5, -1))
    assert not S.Prompt("single", "a 4", (4,)).satisfied_by((-1, -1, -1, -1))
    assert S.Prompt("two", "a 4 and a 5", (4, 5)).satisfied_by((5, -1, -1, 4))
    assert S.Prompt("counting", "three digits", count=3).satisfied_by((5, -1, 0, 0))
    assert not S.Prompt("counting", "three digits", count=3).satisfied_by((5, 1, 0, 0))


@pytest.mark.parametrize("tokenizer", [PixelQuantizer(17, image_size=16), PatchCodebook(16, 2, image_size=16)])
def test_scene_codes_equal_coding_the_rendered_scene(tokenizer):
    tokenizer.fit(SPLITS["train"].images[:200])
    ds = SceneRows(TokenSpace(tokenizer.n_codes), tokenizer, SPLITS["val"], "val", 2, 30, "mmu", train=True, seed=0)
    for i in range(30):
        scene, _ = ds.item(i)
        torch.testing.assert_close(ds.codes(scene), tokenizer.encode(scene.render(SPLITS["val"].images)[None])[0])
    assert ds[0]["ids"].shape[0] > tokenizer.n_tokens


def test_eval_rows_carry_answers_prompts_and_real_scenes():
    tok = PixelQuantizer(17, image_size=16)
    sp = TokenSpace(tok.n_codes)
    mmu = SceneMMUPrompts(sp, tok, SPLITS["test"], 2, 25, seed=0)
    batches = same_length_batches([mmu.question_length(i) for i in range(len(mmu))], 4)
    assert sorted(i for b in batches for i in b) == list(range(25))
    for b in batches:
        batch = collate_rows([mmu[i] for i in b], sp.pad)
        assert batch["valid"].all()  # equal lengths: nothing padded
        assert batch["answer"] == [mmu.item(i)[1].answer for i in b]
        assert batch["qtype"].tolist() == [i % 5 for i in b]
    prebatched = PreBatched(mmu, batches)
    assert len(prebatched) == len(batches)
    again = collate_prebatched([prebatched[1]], sp.pad)
    torch.testing.assert_close(again["ids"], collate_rows([mmu[i] for i in batches[1]], sp.pad)["ids"])
    t2i = SceneT2IPrompts(sp, tok, SPLITS["test"], 2, per_category=2, seed=0)
    batch = collate_rows([t2i[i] for i in range(len(t2i))], sp.pad)
    assert len(t2i) == 8 and batch["scene_codes"].shape == (8, 256)
    assert (batch["ids"][batch["is_image"]] == sp.mask).all()
    assert [p.category for p in batch["prompt"]] == list(S.PROMPT_CATEGORIES) * 2


def test_same_length_batches():
    assert same_length_batches([3, 4, 3, 3, 4], 2) == [[0, 2], [3], [1, 4]]


def test_data_config_kinds():
    assert DataConfig().kind == "digits" and DataConfig().image_size == 8
    assert DataConfig(kind="scenes", grid=3).image_size == 24
    with pytest.raises(ConfigError):
        DataConfig(kind="scene")
    with pytest.raises(ConfigError):
        DataConfig(kind="scenes", grid=4)
