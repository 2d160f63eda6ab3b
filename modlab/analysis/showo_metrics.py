"""Task metrics of a Show-o-like model on a few held-out prompts (for drop-one-layer importance):
MMU answer accuracy (greedy answers name the right digit), T2I accuracy (MaskGIT samples that the
reference classifier, trained on real training digits, reads as the prompted digit)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from modlab.data import digits as D
from modlab.data.rows import MMUPrompts, T2IPrompts, collate_rows
from modlab.evaluation.reference_classifier import train_reference_classifier


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
) -> dict[str, Callable[[], float]]:
    """{"mmu_acc": fn, "t2i_acc": fn}: each scores the model as it is when called."""
    splits = D.load_digit_splits(split_seed)
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
        classifier = train_reference_classifier(
            splits["train"].images, splits["train"].labels, seed=seed, epochs=classifier_epochs
        )

        def t2i_acc() -> float:
            g = torch.Generator().manual_seed(seed)  # the same sampling noise under every drop
            codes = model.sample_images(t2i, maskgit_steps, guidance, 1.0, g)
            pred = classifier.predict(image_tokenizer.decode(codes).float())
            return float((pred == t2i["digit"]).float().mean())

        metrics["t2i_acc"] = t2i_acc
    return metrics
