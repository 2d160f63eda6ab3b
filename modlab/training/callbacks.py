"""modlab's own Lightning callbacks: progress lines for logs and batch jobs, and a model summary
without Lightning's FLOPs column (it counts 0 without an example input; metrics.json has
modlab's routing-aware count)."""

from __future__ import annotations

import math
import time

from lightning.pytorch.callbacks import Callback, RichModelSummary

from modlab.progress import ProgressLines, format_duration, install_terminal_filter, log


class ProgressLog(Callback):
    """Every `interval_s` seconds of training (and at the last step): one line with the step, the
    training loss, steps per second and the time left, through the `modlab.progress` logger (the
    run's log file; the console only where it is not a terminal). Validation and test loops get
    the same lines (batch k of n, time left): a real model's evaluation can take many minutes."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s = interval_s
        self.lines = None

    def on_train_start(self, trainer, pl_module) -> None:
        install_terminal_filter()
        self.start = self.last = time.perf_counter()
        self.first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now, step, total = time.perf_counter(), trainer.global_step, trainer.max_steps
        if now - self.last < self.interval_s and step != total:
            return
        self.last = now
        rate = (step - self.first_step) / max(now - self.start, 1e-9)
        loss = trainer.callback_metrics.get("train/loss")
        left = (total - step) / rate if rate > 0 and total > 0 else math.nan
        if trainer.is_global_zero:
            log.info(
                "step %d/%d  loss %s  %.2f steps/s  elapsed %s  left %s",
                step,
                total,
                "-" if loss is None else f"{float(loss):.4f}",
                rate,
                format_duration(now - self.start),
                format_duration(left),
            )

    def _loop_start(self, trainer, name: str, batches) -> None:
        total = int(sum(batches)) if isinstance(batches, (list, tuple)) else int(batches)
        if trainer.is_global_zero and math.isfinite(total) and total > 0:
            self.lines = self.lines or ProgressLines(self.interval_s)
            self.advance = self.lines.stage(name, total)
        else:
            self.advance = None

    def _loop_step(self) -> None:
        if self.advance is not None:
            self.advance()

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            self._loop_start(trainer, "validation sanity check", trainer.num_sanity_val_batches)
        else:
            self._loop_start(trainer, f"validation at step {trainer.global_step}", trainer.num_val_batches)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._loop_step()

    def on_test_start(self, trainer, pl_module) -> None:
        self._loop_start(trainer, "test batch", trainer.num_test_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._loop_step()


class ParamSummary(RichModelSummary):
    """Lightning's rich model summary less its FLOPs column and total."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, **kwargs):
        from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count
        from rich import get_console
        from rich.table import Table

        keep = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style="bold magenta")
        table.add_column(" ", style="dim")
        for name, _ in keep[1:]:
            table.add_column(name, justify="right" if name == "Params" else "left")
        for row in zip(*(values for _, values in keep)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters))}   "
            f"[bold]Frozen[/]: {get_human_readable_count(int(frozen))}   "
            f"[bold]Size[/]: {model_size:.2f} MB   (training FLOPs per step: metrics.json)"
        )
