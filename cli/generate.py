"""`modlab generate ckpt_path=...`: T2I samples as a PNG grid, MMU answers as text."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from modlab.cli.runtime import load_unified_module, run_dir
from modlab.cli.schema import validate


def generate(cfg: DictConfig) -> dict:
    c = validate(cfg)
    module = load_unified_module(c.ckpt_path)
    import torch
    from rich.console import Console
    from rich.table import Table

    from modlab.data import digits as D
    from modlab.data.rows import MMUPrompts, collate_rows, t2i_row
    from modlab.evaluation.plots import save_image_grid

    out, e, sp, tok = run_dir(), c.eval, module.space, module.image_tokenizer
    torch.manual_seed(c.seed)
    g = torch.Generator().manual_seed(c.seed)
    prompts = list(c.prompts) or [D.EVAL_CAPTION.format(d=d, name=D.DIGIT_NAMES[d]) for d in range(10)]

    rows = [t2i_row(sp, p, None, tok.n_tokens) for p in prompts for _ in range(c.samples_per_prompt)]
    with torch.no_grad():
        codes = module.model.sample_images(collate_rows(rows, sp.pad), e.maskgit_steps, e.guidance, e.temperature, g)
    images = tok.decode(codes).reshape(len(prompts), c.samples_per_prompt, 8, 8)
    grid = save_image_grid(images, prompts, out / "t2i_samples.png")

    console = Console()
    answers = []
    if c.mmu_images:
        splits = D.load_digit_splits(module.data_cfg.split_seed)
        n = min(c.mmu_images, len(splits["test"].labels))
        ds = MMUPrompts(sp, tok.encode(splits["test"].images[:n]), splits["test"].labels[:n])
        texts = module.model.answer(collate_rows([ds[i] for i in range(n)], sp.pad), e.max_answer_tokens)
        table = Table(title=f"MMU: \"{D.question(0)}\" on test digits", header_style="bold")
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
