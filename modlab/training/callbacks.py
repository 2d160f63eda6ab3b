"""modlab's own Lightning callbacks: progress lines for logs and batch jobs, and a model summary
without Lightning's FLOPs column (it counts 0 without an example input; metrics.json has
modlab's routing-aware count)."""

from __future__ import annotations

import logging
import math
import sys
import time

from lightning.pytorch.callbacks import Callback, RichModelSummary

log = logging.getLogger("modlab.progress")


class _TerminalFilter(logging.Filter):
    """Keeps progress lines off a console that is a terminal (the rich bar shows progress there);
    file handlers always get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == log.name and sys.stdout.isatty())


def _install_terminal_filter() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _TerminalFilter) for f in handler.filters):
                handler.addFilter(_TerminalFilter())


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressLog(Callback):
    """Every `interval_s` seconds of training (and at the last step): one line with the step, the
    training loss, steps per second and the time left, through the `modlab.progress` logger (the
    run's log file; the console only where it is not a terminal)."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s = interval_s

    def on_train_start(self, trainer, pl_module) -> None:
        _install_terminal_filter()
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


class LastCheckpointAtEnd(Callback):
    """last.ckpt holds the weights at the end of training. Lightning writes it after validations
    only (every val_check_interval steps), so a 5-step run validated every 2 steps left its step-4
    weights there: `modlab eval` of last.ckpt would not test what `callbacks.test_checkpoint=last`
    tested, and `init_from=.../last.ckpt` would start from an earlier model."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint  # the ModelCheckpoint that writes last.ckpt

    def on_train_end(self, trainer, pl_module) -> None:
        from pathlib import Path

        if getattr(self.checkpoint, "_last_global_step_saved", -1) != trainer.global_step:
            trainer.save_checkpoint(Path(self.checkpoint.dirpath) / "last.ckpt")
