"""Scorers of digit scenes: real scenes that match their prompts score 1, a blank or wrong digit
scores 0, answers match exactly, and the digits-FID separates real digits from noise."""

from __future__ import annotations

import pytest
import torch

from modlab.data import scenes as S
from modlab.data.digits import load_digit_splits
from modlab.evaluation.fid import FrechetDistance, feature_frechet_distance, frechet_distance
from modlab.evaluation.reference_classifier import train_reference_classifier
from modlab.evaluation.scene_metrics import SceneMetrics
from modlab.evaluation.scene_scorers import (
    BLANK_MEAN_GREY,
    answers_correct,
    blank_cells,
    normalize_answer,
    prompts_satisfied,
    read_cells,
    split_cells,
)

SPLITS = load_digit_splits(0)


@pytest.fixture(scope="module")
def classifier():
    # a few epochs keep the test fast; the claims below hold for whatever the classifier reads
    with torch.random.fork_rng():
        return train_reference_classifier(SPLITS["train"].images, SPLITS["train"].labels, seed=0, epochs=4)


def eval_scenes(n: int, grid: int = 2):
    return [S.scene_item(SPLITS["test"], "test", grid, "t2i", i, 0, train=False) for i in range(n)]


def render(scenes, images=SPLITS["test"].images) -> torch.Tensor:
    return torch.stack([torch.as_tensor(s.render(images)) for s in scenes])


def test_cells_split_in_raster_order():
    img = torch.arange(256.0).reshape(1, 16, 16)
    cells = split_cells(img, 2)
    torch.testing.assert_close(cells[0, 1], img[0, :8, 8:])
    torch.testing.assert_close(cells[0, 2], img[0, 8:, :8])


def test_blank_detector_separates_empty_cells_from_every_real_digit():
    real = torch.as_tensor(SPLITS["train"].images)
    assert not blank_cells(real).any()
    assert blank_cells(torch.zeros(3, 8, 8)).all()
    assert blank_cells(torch.full((1, 8, 8), BLANK_MEAN_GREY * 0.9)).all()


@pytest.mark.parametrize("grid", [2, 3])
def test_real_scene_matching_its_prompt_scores_1(classifier, grid):
    drawn = eval_scenes(120, grid)
    scenes, prompts = [s for s, _ in drawn], [p for _, p in drawn]
    labels, features = read_cells(classifier, render(scenes), grid)
    truth = torch.tensor([s.digits for s in scenes])
    assert ((labels == S.BLANK) == (truth == S.BLANK)).all()  # blanks are read as blanks, digits never
    assert features.shape == (int((truth != S.BLANK).sum()), 256)
    ok = prompts_satisfied(prompts, labels)
    read_right = (labels == truth).all(1)
    assert ok[read_right].all()  # every scene the classifier reads right scores 1
    assert ok.float().mean() >= 0.9


def test_a_blank_or_a_wrong_digit_scores_0(classifier):
    drawn = eval_scenes(80)
    by_label = [torch.as_tensor(SPLITS["test"].images[SPLITS["test"].labels == d]) for d in range(10)]
    checked = 0
    for scene, prompt in drawn:
        img = torch.as_tensor(scene.render(SPLITS["test"].images))
        labels, _ = read_cells(classifier, img[None], 2)
        if labels[0].tolist() != list(scene.digits):
            continue  # the classifier misreads this real scene: nothing to break
        occupied = [c for c, d in enumerate(scene.digits) if d != S.BLANK]
        cells = split_cells(img[None], 2)[0]

        def scene_with(cell: int, content: torch.Tensor) -> torch.Tensor:
            new = cells.clone()
            new[cell] = content
            return new.reshape(2, 2, 8, 8).permute(0, 2, 1, 3).reshape(1, 16, 16)

        blanked = scene_with(occupied[0], torch.zeros(8, 8))
        assert not prompts_satisfied([prompt], read_cells(classifier, blanked, 2)[0])[0]
        if prompt.category == "counting":
            empty = [c for c in range(4) if c not in occupied]
            if empty:  # one digit too many
                extra = scene_with(empty[0], by_label[0][0])
                assert not prompts_satisfied([prompt], read_cells(classifier, extra, 2)[0])[0]
        else:  # a digit the prompt does not name, in place of one it names
            wrong = next(d for d in range(10) if d not in prompt.digits)
            image = next(x for x in by_label[wrong] if int(classifier.predict(x[None])) == wrong)
            swapped = scene_with(occupied[0], image)
            assert not prompts_satisfied([prompt], read_cells(classifier, swapped, 2)[0])[0]
        checked += 1
    assert checked >= 60


def test_answers_match_exactly_after_normalising():
    assert normalize_answer(" Top  Left. ") == "top left"
    ok = answers_correct(
        ["3", "3.", "13", "yes", "no yes", "", "top left"], ["3", "3", "3", "yes", "yes", "none", "bottom left"]
    )
    assert ok.tolist() == [True, True, False, True, False, False, False]


def test_frechet_distance_matches_the_closed_form():
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = 5.0 + float((a + b - 2 * (a * b).sqrt()).sum())  # |mu1-mu2|^2 + tr(A + B - 2 sqrt(AB))
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected)
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    assert feature_frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_digits_fid_is_small_for_real_digits_and_large_for_noise(classifier):
    with torch.no_grad():
        train = classifier.features(torch.as_tensor(SPLITS["train"].images))
        test = classifier.features(torch.as_tensor(SPLITS["test"].images))
        noise = classifier.features(torch.rand(360, 8, 8, generator=torch.Generator().manual_seed(0)) * 16)
    real_fid, noise_fid = feature_frechet_distance(test, train), feature_frechet_distance(noise, train)
    assert real_fid < 0.1 * noise_fid, (real_fid, noise_fid)
    metric = FrechetDistance(train)
    for chunk in test.split(100):
        metric.update(chunk)
    assert float(metric.compute()) == pytest.approx(real_fid, rel=1e-6)


def test_scene_metrics_score_per_type_and_category(classifier):
    real = torch.as_tensor(SPLITS["test"].images)
    with torch.no_grad():
        m = SceneMetrics(classifier.features(real), grid=2)
    m.update_mmu(["3", "no", "top left"], ["3", "yes", "top left"], torch.tensor([0, 2, 3]))
    got = {
        k: float(v.compute())
        for k, v in m.mmu_metrics().items()
        if k.endswith(("acc", "position", "presence", "compare"))
    }
    assert got == {
        "test/mmu_acc": pytest.approx(2 / 3),
        "test/mmu_acc/position": 1.0,
        "test/mmu_acc/presence": 0.0,
        "test/mmu_acc/compare": 1.0,
    }
    drawn = eval_scenes(8)
    scenes, prompts = [s for s, _ in drawn], [p for _, p in drawn]
    images = render(scenes)
    blank = torch.zeros_like(images)
    m.update_t2i(classifier, prompts, blank, images)  # blank samples fail every prompt
    t2i = {k: float(v.compute()) for k, v in m.t2i_metrics().items()}
    assert t2i["test/t2i_acc"] == 0.0 and t2i["test/t2i_acc/counting"] == 0.0
    assert t2i["test/t2i_acc_tokenized"] >= 0.75
    assert t2i["test/t2i_fid_tokenized"] >= 0  # finite: the real scenes' cells
