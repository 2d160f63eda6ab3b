"""modlab's own Lightning callbacks: progress lines for logs and batch jobs, a model summary
without Lightning's FLOPs column (it counts 0 without an example input; metrics.json has
modlab's routing-aware count), and a checkpoint when a cluster warns of a pre-emption."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback, RichModelSummary
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count
from rich import get_console
from rich.table import Table

from modlab.progress import ProgressLines, format_duration, install_terminal_filter, log

# what the run must show on any console (the progress logger's lines stay off a terminal)
notice = logging.getLogger("modlab")


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


class PreemptionCheckpoint(Callback):
    """SIGUSR2 during training (what SLURM sends `signal_delay_s` before a pre-emption or time-out
    kill, and what submitit requeues on) writes `last.ckpt` at the step it arrived in, so the job
    that continues the run (requeued, or `resume=`) loses no work.

    The signal only asks for a stop: it is turned into Lightning's own graceful stop, SIGTERM, on
    which the loop ends at the end of the current step (after its validation and logging, on every
    process at the same step) by raising SIGTERMException; that exception's `on_exception` writes
    the checkpoint, as Lightning's OnExceptionCheckpoint does, but only for this stop (any other
    exception may come in the middle of a step). Then the signal goes on to the handler it had
    before training: submitit's requeue, or, without one, the default action (the process ends, as
    it would have without modlab, only after the checkpoint)."""

    SIGNAL = getattr(signal, "SIGUSR2", None)  # none on Windows

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.requested = False
        self._previous = None  # the signal's handler before training; None while not installed

    def on_train_start(self, trainer, pl_module) -> None:
        if self.SIGNAL is None or threading.current_thread() is not threading.main_thread():
            return  # Python sets signal handlers in the main thread only
        previous = signal.getsignal(self.SIGNAL)
        if previous is None or previous == signal.SIG_IGN:
            return  # set outside Python, or ignored on purpose: left alone
        self._previous = previous
        signal.signal(self.SIGNAL, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if not self.requested:
            notice.warning("%s: stopping at the end of this step to save a checkpoint", signal.Signals(signum).name)
        self.requested = True
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler, installed for the fit, marks the stop

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._previous is None or not isinstance(exception, SIGTERMException):
            return
        # every process stops at the same step (Lightning broadcasts rank 0's stop): all of them
        # take part in the save, whichever received the signal
        if trainer.strategy.broadcast(self.requested, src=0):
            self._save(trainer)
            self._hand_on()

    def on_train_end(self, trainer, pl_module) -> None:
        # arrived during the last step: nothing stopped (every process is here: a collective is safe)
        if self._previous is not None and trainer.strategy.broadcast(self.requested, src=0):
            self._save(trainer)
            self._hand_on()
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def _save(self, trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        if trainer.is_global_zero:
            notice.warning("saved %s at step %d", self.path, trainer.global_step)

    def _restore(self):
        previous, self._previous = self._previous, None
        if previous is not None:
            signal.signal(self.SIGNAL, previous)
        return previous

    def _hand_on(self) -> None:
        previous = self._restore()
        if callable(previous):
            previous(self.SIGNAL, None)  # submitit: requeues the job and exits
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), self.SIGNAL)  # its default action: the process ends here


class LastCheckpointAtEnd(Callback):
    """last.ckpt holds the weights at the end of training. Lightning writes it after validations
    only (every val_check_interval steps), so a 5-step run validated every 2 steps left its step-4
    weights there: `modlab eval` of last.ckpt would not test what `callbacks.test_checkpoint=last`
    tested, and `init_from=.../last.ckpt` would start from an earlier model."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint  # the ModelCheckpoint that writes last.ckpt

    def on_train_end(self, trainer, pl_module) -> None:
        if getattr(self.checkpoint, "_last_global_step_saved", -1) != trainer.global_step:
            trainer.save_checkpoint(Path(self.checkpoint.dirpath) / "last.ckpt")
