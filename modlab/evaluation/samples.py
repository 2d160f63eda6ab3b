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
from modlab.data.rows import SceneMMUPrompts, collate_rows
from modlab.evaluation.scene_scorers import answers_correct
from modlab.models.unified_protocol import UnifiedModelProtocol


def generate_samples(module, c, out: Path) -> dict:
    """T2I samples of `c.prompts` (default: one per digit, or scene prompts) as a PNG grid, and
    greedy MMU answers about `c.mmu_images` test images, printed and written as JSON / text."""
    # matplotlib only when a figure is drawn
    from modlab.evaluation.image_grid import save_image_grid

    e, tok = c.eval, module.image_tokenizer
    model: UnifiedModelProtocol = module.model  # modlab's own or a Hugging Face one: the same calls
    torch.manual_seed(c.seed)
    g = torch.Generator().manual_seed(c.seed)
    scenes = module.data_cfg.kind == "scenes"
    prompts = list(c.prompts) or (
        _scene_prompts(module.data_cfg)
        if scenes
        else [D.EVAL_CAPTION.format(d=d, name=D.DIGIT_NAMES[d]) for d in range(10)]
    )

    batch = model.t2i_prompts([p for p in prompts for _ in range(c.samples_per_prompt)])
    with torch.no_grad():
        codes = model.sample_images(batch, e.maskgit_steps, e.guidance, e.temperature, g)
        images = model.decode_images(codes, tok)
    if images is None:  # a model that cannot draw pixels (Chameleon in transformers): its codes
        grid = out / "t2i_codes.json"
        grid.write_text(
            json.dumps({"prompts": prompts, "codes": codes.view(len(prompts), c.samples_per_prompt, -1).tolist()})
        )
        Console().print(f"{type(model).__name__} has no VQ decoder in transformers: the drawn codes, not images")
    else:
        images = images.reshape(len(prompts), c.samples_per_prompt, *images.shape[1:])
        grid = save_image_grid(images, prompts, out / "t2i_samples.png", vmax=model.image_vmax)

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
        batch = model.mmu_prompts(codes, labels, splits["test"].images[:n])
        texts = model.answer(batch, e.max_answer_tokens)
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
