"""`modlab generate` for the unified families: T2I samples as a PNG grid, MMU answers as text."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from modlab.data import digits as D
from modlab.data import scenes as S
from modlab.data.digits import load_digit_splits
from modlab.data.hf_unified_rows import DigitImages, PromptRows
from modlab.data.rows import MMUPrompts, SceneMMUPrompts, collate_rows, left_pad, t2i_row
from modlab.evaluation.scene_scorers import answers_correct


def generate_samples(module, c, out: Path) -> dict:
    """T2I samples of `c.prompts` (default: one per digit, or scene prompts) as a PNG grid, and
    greedy MMU answers about `c.mmu_images` test images, printed and written as JSON / text."""
    # matplotlib only when a figure is drawn
    from modlab.evaluation.image_grid import save_image_grid

    e, sp, tok = c.eval, getattr(module, "space", None), module.image_tokenizer
    torch.manual_seed(c.seed)
    g = torch.Generator().manual_seed(c.seed)
    scenes = module.data_cfg.kind == "scenes"
    prompts = list(c.prompts) or (
        _scene_prompts(module.data_cfg)
        if scenes
        else [D.EVAL_CAPTION.format(d=d, name=D.DIGIT_NAMES[d]) for d in range(10)]
    )

    hf = hasattr(module.model, "t2i_prompt")  # a Hugging Face unified model: rows in its own format
    if hf:
        rows = [module.model.t2i_prompt(p) for p in prompts for _ in range(c.samples_per_prompt)]
        batch = left_pad(rows, module.model.pad)
    else:
        rows = [t2i_row(sp, p, None, tok.n_tokens) for p in prompts for _ in range(c.samples_per_prompt)]
        batch = collate_rows(rows, sp.pad)
    with torch.no_grad():
        codes = module.model.sample_images(batch, e.maskgit_steps, e.guidance, e.temperature, g)
    if hf and not module.model.codec.has_decoder:  # Chameleon in transformers: codes, no pixels
        grid = out / "t2i_codes.json"
        grid.write_text(
            json.dumps({"prompts": prompts, "codes": codes.view(len(prompts), c.samples_per_prompt, -1).tolist()})
        )
        Console().print(
            f"{type(module.model.codec).__name__} has no VQ decoder in transformers: the drawn codes, not images"
        )
    elif hf:  # RGB at the VQ codec's resolution, decoded by the model's own VQ decoder
        images = module.model.codec.decode(codes)
        images = images.reshape(len(prompts), c.samples_per_prompt, *images.shape[1:])
        grid = save_image_grid(images, prompts, out / "t2i_samples.png", vmax=1.0)
    else:
        images = tok.decode(codes).reshape(len(prompts), c.samples_per_prompt, tok.image_size, tok.image_size)
        grid = save_image_grid(images, prompts, out / "t2i_samples.png")

    console = Console()
    answers = []
    if c.mmu_images and scenes:
        answers = _scene_answers(module, c.mmu_images, e.max_answer_tokens)
        table = Table(title="MMU: questions about test scenes", header_style="bold")
        for col in ("#", "type", "question", "expected", "answer", "right"):
            table.add_column(col)
        for a in answers:
            table.add_row(
                str(a["index"]),
                a["type"],
                a["question"],
                a["expected"],
                a["answer"],
                "yes" if a["correct"] else "[red]no[/red]",
            )
        console.print(table)
        (out / "mmu_answers.json").write_text(json.dumps(answers, indent=2) + "\n")
    elif c.mmu_images:
        splits = D.load_digit_splits(module.data_cfg.split_seed)
        n = min(c.mmu_images, len(splits["test"].labels))
        codes, labels = tok.encode(splits["test"].images[:n]), splits["test"].labels[:n]
        if hf:
            images = DigitImages(splits["test"].images[:n], module.model.codec.resolution)
            ds, pad = PromptRows(module.model, "mmu", codes, labels, images=images), module.model.pad
            batch = left_pad([ds[i] for i in range(n)], pad)
        else:
            ds = MMUPrompts(sp, codes, labels)
            batch = collate_rows([ds[i] for i in range(n)], sp.pad)
        texts = module.model.answer(batch, e.max_answer_tokens)
        table = Table(title=f'MMU: "{D.question(0)}" on test digits', header_style="bold")
        for col in ("#", "true digit", "answer", "right"):
            table.add_column(col)
        for i, text in enumerate(texts):
            truth = int(splits["test"].labels[i])
            ok = D.answered_digit(text) == truth
            answers.append({"index": i, "digit": truth, "answer": text, "correct": ok})
            table.add_row(str(i), str(truth), text, "yes" if ok else "[red]no[/red]")
        console.print(table)
        (out / "mmu_answers.json").write_text(json.dumps(answers, indent=2) + "\n")
        (out / "mmu_answers.txt").write_text("".join(f"{a['digit']}\t{a['answer']}\n" for a in answers))
    console.print(f"T2I samples: [bold]{grid}[/bold]")
    console.print(f"run directory: [bold]{out}[/bold]")
    return {"t2i_samples": str(grid), "mmu_answers": answers}


def _scene_prompts(data_cfg) -> list[str]:
    """Two test prompts of each category (the ones `modlab eval` starts with)."""
    test = load_digit_splits(data_cfg.split_seed)["test"]
    n = 2 * len(S.PROMPT_CATEGORIES)
    return [
        S.scene_item(test, "test", data_cfg.grid, "t2i", i, data_cfg.scene_seed, train=False)[1].text for i in range(n)
    ]


def _scene_answers(module, n: int, max_tokens: int) -> list[dict]:
    """Greedy answers to the first n test questions about scenes (one row at a time: they differ in length)."""
    d, sp = module.data_cfg, module.space
    ds = SceneMMUPrompts(sp, module.image_tokenizer, load_digit_splits(d.split_seed)["test"], d.grid, n, d.scene_seed)
    out = []
    for i in range(n):
        q = ds.item(i)[1]
        text = module.model.answer(collate_rows([ds[i]], sp.pad), max_tokens)[0]
        out.append(
            {
                "index": i,
                "type": q.qtype,
                "question": q.text,
                "expected": q.answer,
                "answer": text,
                "correct": bool(answers_correct([text], [q.answer])[0]),
            }
        )
    return out
