"""`make bench`: speed ratios, printed as a rich table and written to a JSON file.

Benchmarks are never part of the tests (timings on a shared 2-core machine are noisy); they
report ratios measured back to back in one process, with the median of several repeats.

Today: the Show-o-like training step (forward + backward + AdamW) in fp32 vs bf16 autocast,
the choice `trainer.precision=auto` makes. The routing issue adds routed-vs-dense tables.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from modlab.data.config import DataConfig
from modlab.data.rows import concat_batches
from modlab.models.config import ModelConfig
from modlab.models.showo import ShowO


def _median_seconds(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def training_step_precision() -> dict:
    from modlab.tasks.config import EvalConfig
    from modlab.tasks.digits_datamodule import DigitsDataModule

    dm = DigitsDataModule(DataConfig(), EvalConfig())
    loaders = dm.train_dataloader().iterables
    batch = concat_batches([next(iter(loader)) for loader in loaders.values()], dm.space.pad)
    torch.manual_seed(0)
    model = ShowO(ModelConfig(), dm.space, dm.image_tokenizer.n_tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(model.task_losses(model.mask_images(batch, 0.1)).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fp32 = _median_seconds(lambda: step(False))
    bf16 = _median_seconds(lambda: step(True))
    return {"rows": int(batch["ids"].shape[0]), "seq_len": int(batch["ids"].shape[1]),
            "fp32_s": fp32, "bf16_s": bf16, "speedup_bf16": fp32 / bf16}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with console.status("showo_dense training step: fp32 vs bf16 autocast"):
        results["training_step_precision"] = r = training_step_precision()
    table = Table(title=f"Show-o-like training step ({r['rows']} rows x {r['seq_len']} tokens, {results['threads']} threads)")
    for col in ("fp32 s/step", "bf16 s/step", "bf16 speed-up"):
        table.add_column(col, justify="right")
    table.add_row(f"{r['fp32_s']:.3f}", f"{r['bf16_s']:.3f}", f"{r['speedup_bf16']:.2f}x")
    console.print(table)
    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results: [bold]{path}[/bold]")


if __name__ == "__main__":
    main()
