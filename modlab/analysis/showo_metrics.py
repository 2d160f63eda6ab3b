"""Task metrics of a Show-o-like (or Emu3-like) model on a few held-out prompts (for drop-one-layer
importance), for the data kind the checkpoint trained on (`data_cfg.kind`):

- single digits: MMU answer accuracy (greedy answers name the right digit), T2I accuracy (samples
  for "a handwritten <d>" that the reference classifier, trained on real training digits, reads
  as the prompted digit);
- digit scenes: MMU exact-match accuracy on scene questions, T2I accuracy of samples for scene
  prompts read cell by cell by the same classifier and checked against what the prompt asked
  for (modlab.evaluation.scene_scorers, as `modlab eval` scores scenes). Scenes are never
  reshaped as single digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from modlab.data import digits as D
from modlab.data.rows import MMUPrompts, SceneMMUPrompts, SceneT2IPrompts, T2IPrompts, collate_rows, same_length_batches
from modlab.data.scenes import PROMPT_CATEGORIES
from modlab.evaluation.reference_classifier import train_reference_classifier
from modlab.evaluation.scene_scorers import answers_correct, prompts_satisfied, read_cells


def showo_task_metrics(
    model,
    space,
    image_tokenizer,
    split_seed: int,
    split: str,
    mmu_prompts: int,
    t2i_per_digit: int,
    maskgit_steps: int,
    guidance: float,
    classifier_epochs: int,
    seed: int = 0,
    tasks: tuple[str, ...] = ("mmu", "t2i"),
    data_cfg=None,
) -> dict[str, Callable[[], float]]:
    """{"mmu_acc": fn, "t2i_acc": fn}: each scores the model as it is when called. `data_cfg`
    (the checkpoint's DataConfig; None: single digits) says digits or scenes; on scenes
    `t2i_per_digit` sets the prompt count (10 * t2i_per_digit prompts, balanced over the
    prompt categories) and `mmu_prompts` the number of scene questions."""
    splits = D.load_digit_splits(split_seed)
    scenes = data_cfg is not None and data_cfg.kind == "scenes"
    classifier = None
    if "t2i" in tasks:
        classifier = train_reference_classifier(
            splits["train"].images, splits["train"].labels, seed=seed, epochs=classifier_epochs
        )
    if scenes:
        return _scene_metrics(
            model,
            space,
            image_tokenizer,
            splits[split],
            split,
            data_cfg,
            mmu_prompts,
            t2i_per_digit,
            maskgit_steps,
            guidance,
            classifier,
            seed,
            tasks,
        )
    metrics = {}
    if "mmu" in tasks:
        held_out = splits[split]
        n = min(mmu_prompts, len(held_out.labels))
        ds = MMUPrompts(space, image_tokenizer.encode(held_out.images[:n]), held_out.labels[:n])
        mmu = collate_rows([ds[i] for i in range(n)], space.pad)

        def mmu_acc() -> float:
            answers = model.answer(mmu, max_new_tokens=16)
            right = [D.answered_digit(a) == int(d) for a, d in zip(answers, mmu["digit"])]
            return sum(right) / len(right)

        metrics["mmu_acc"] = mmu_acc
    if "t2i" in tasks:
        ds = T2IPrompts(space, image_tokenizer.n_tokens, t2i_per_digit)
        t2i = collate_rows([ds[i] for i in range(len(ds))], space.pad)

        def t2i_acc() -> float:
            g = torch.Generator().manual_seed(seed)  # the same sampling noise under every drop
            codes = model.sample_images(t2i, maskgit_steps, guidance, 1.0, g)
            pred = classifier.predict(image_tokenizer.decode(codes).float())
            return float((pred == t2i["digit"]).float().mean())

        metrics["t2i_acc"] = t2i_acc
    return metrics


def _scene_metrics(
    model,
    space,
    tokenizer,
    held_out,
    split: str,
    data_cfg,
    mmu_prompts: int,
    t2i_per_digit: int,
    maskgit_steps: int,
    guidance: float,
    classifier,
    seed: int,
    tasks,
) -> dict[str, Callable[[], float]]:
    c, metrics = data_cfg, {}
    if "mmu" in tasks:
        ds = SceneMMUPrompts(space, tokenizer, held_out, c.grid, mmu_prompts, c.scene_seed, split_name=split)
        # greedy decoding needs unpadded prompts: one batch per question length
        groups = same_length_batches([ds.question_length(i) for i in range(len(ds))], len(ds))
        batches = [collate_rows([ds[i] for i in g], space.pad) for g in groups]

        def mmu_acc() -> float:
            right = [answers_correct(model.answer(b, max_new_tokens=16), b["answer"]) for b in batches]
            return float(torch.cat(right).float().mean())

        metrics["mmu_acc"] = mmu_acc
    if "t2i" in tasks:
        per_category = math.ceil(10 * t2i_per_digit / len(PROMPT_CATEGORIES))
        ds = SceneT2IPrompts(space, tokenizer, held_out, c.grid, per_category, c.scene_seed, split_name=split)
        t2i = collate_rows([ds[i] for i in range(len(ds))], space.pad)

        def t2i_acc() -> float:
            g = torch.Generator().manual_seed(seed)  # the same sampling noise under every drop
            codes = model.sample_images(t2i, maskgit_steps, guidance, 1.0, g)
            cells, _ = read_cells(classifier, tokenizer.decode(codes).float(), c.grid)
            return float(prompts_satisfied(t2i["prompt"], cells).float().mean())

        metrics["t2i_acc"] = t2i_acc
    return metrics
