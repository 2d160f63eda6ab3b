"""Defect 1 (issue 12): analyses of a scenes checkpoint must calibrate and score on scenes.

Calibration rows were always single digits (16 image tokens with the patch codebook, 35-62
tokens a row) whatever the checkpoint's data.kind; the `importance` job's T2I accuracy reshaped
64-token scenes as 8x8 digits. Here a tiny scenes model is built from configs (no training)."""

from __future__ import annotations

import math

import pytest
import torch

from modlab.analysis.calibration import calibration_batches
from modlab.analysis.showo_metrics import showo_task_metrics
from modlab.data.config import DataConfig
from modlab.data.digits import load_digit_splits
from modlab.data.rows import SceneMMUPrompts, SceneRows, SceneT2IPrompts, collate_rows, same_length_batches
from modlab.evaluation.reference_classifier import train_reference_classifier
from modlab.evaluation.scene_scorers import answers_correct, prompts_satisfied, read_cells
from modlab.models.config import ModelConfig
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.unified import UnifiedModule

DATA = DataConfig(kind="scenes", grid=2, image_tokenizer="patch_kmeans", val_scenes=24, test_scenes=24)


@pytest.fixture(scope="module")
def scenes_module():
    torch.manual_seed(0)
    module = UnifiedModule.from_configs(
        ModelConfig(d_model=32, n_layer=2, n_head=2), DATA, ObjectiveConfig(), EvalConfig()
    )
    module.image_tokenizer.fit(load_digit_splits(DATA.split_seed)["train"].images)  # as the data module fits it
    return module.eval()


def test_calibration_rows_of_a_scenes_checkpoint_are_its_scenes(scenes_module):
    tok, space = scenes_module.image_tokenizer, scenes_module.space
    assert tok.n_tokens == 64  # a 16x16 scene in 2x2 patches
    batches = calibration_batches(scenes_module.data_cfg, tok, ["t2i", "mmu", "lm"], 8, seed=0, batch_size=4)
    val = load_digit_splits(DATA.split_seed)["val"]
    for task in ("t2i", "mmu"):
        ds = SceneRows(space, tok, val, "val", DATA.grid, DATA.val_scenes, task, False, DATA.scene_seed)
        expected = {tuple(ds[i]["ids"].tolist()) for i in range(len(ds))}
        rows = 0
        for b in batches[task]:
            assert (b["is_image"].sum(1) == 64).all()  # scene rows, not 16-token digits
            for ids, valid in zip(b["ids"], b["valid"]):
                assert tuple(ids[valid].tolist()) in expected  # validation scenes, evaluation templates
                assert valid.sum() >= 64 + 4
                rows += 1
        assert rows == 8
    assert all(b["ids"].shape[1] == DATA.lm_length for b in batches["lm"])


def test_importance_metrics_of_a_scenes_checkpoint_use_the_scene_scorers(scenes_module):
    model, space, tok = scenes_module.model, scenes_module.space, scenes_module.image_tokenizer
    metrics = showo_task_metrics(
        model, space, tok, DATA.split_seed, "val", mmu_prompts=6, t2i_per_digit=1, maskgit_steps=2,
        guidance=0.0, classifier_epochs=1, seed=0, data_cfg=DATA,
    )  # fmt: skip
    t2i_acc, mmu_acc = metrics["t2i_acc"](), metrics["mmu_acc"]()
    # the oracle: scene prompts of the validation split, samples read cell by cell
    splits = load_digit_splits(DATA.split_seed)
    classifier = train_reference_classifier(splits["train"].images, splits["train"].labels, seed=0, epochs=1)
    per_category = math.ceil(10 / 4)
    prompts = SceneT2IPrompts(space, tok, splits["val"], DATA.grid, per_category, DATA.scene_seed, split_name="val")
    t2i = collate_rows([prompts[i] for i in range(len(prompts))], space.pad)
    codes = model.sample_images(t2i, 2, 0.0, 1.0, torch.Generator().manual_seed(0))
    cells, _ = read_cells(classifier, tok.decode(codes).float(), DATA.grid)
    assert cells.shape == (len(prompts), 4)
    assert t2i_acc == float(prompts_satisfied(t2i["prompt"], cells).float().mean())
    questions = SceneMMUPrompts(space, tok, splits["val"], DATA.grid, 6, DATA.scene_seed, split_name="val")
    right = []
    for g in same_length_batches([questions.question_length(i) for i in range(6)], 6):
        b = collate_rows([questions[i] for i in g], space.pad)
        right.append(answers_correct(model.answer(b, max_new_tokens=16), b["answer"]))
    assert mmu_acc == float(torch.cat(right).float().mean())


def test_training_form_rows_of_the_checkpoints_kind(scenes_module):
    """image_rows(train=True): the checkpoint's own kind of rows in the training form (random
    templates), for jobs that train briefly on it (interactions)."""
    from modlab.analysis.calibration import image_rows

    rows = image_rows(scenes_module.data_cfg, scenes_module.image_tokenizer, ["t2i", "mmu"], "train", train=True)
    assert all(isinstance(ds, SceneRows) and ds.train and ds.n == DATA.train_scenes for ds in rows.values())
    assert (rows["mmu"][0]["is_image"].sum() == 64).item()
