"""The Lightning Trainer every command builds, and the fit -> test run of `modlab train`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from modlab.errors import CheckpointError, ConfigError
from modlab.progress import INTERVAL_S as PROGRESS_INTERVAL_S
from modlab.training.checkpoint import load_checkpoint_file
from modlab.training.distributed import fsdp_strategy
from modlab.training.resume import check_resume_checkpoint, logged_rows_before, resume_state_callback, resume_target

log = logging.getLogger("modlab")


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). oneDNN *runs* bf16 on
    any AVX512 CPU (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` says yes), but without these
    units it emulates it: measured on an AVX512 Xeon without them, a 2048^2 bf16 matmul took 3.3x
    the fp32 one and a Gemma 3 270M forward under bf16 autocast 2.4x. Where the flags cannot be
    read (not Linux), oneDNN's answer stands."""
    try:
        with open(cpuinfo) as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16 autocast where the hardware multiplies bf16 fast, else full fp32."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def build_trainer(
    trainer_cfg,
    callbacks_cfg,
    logger_cfg,
    out_dir: Path,
    training: bool = True,
    model=None,
    experiment: str = "modlab",
    resume_step: int | None = None,
):
    """A Trainer from the trainer / callbacks / logger configs (modlab.training.config);
    `callbacks_cfg` None: a bare progress bar (evaluation). `model`: what `trainer.strategy=fsdp`
    shards (one unit per decoder layer); `experiment` names the logger's experiment / project
    where it has one (MLflow, W&B); `resume_step`: the global step of the checkpoint the run
    continues from."""
    # Lightning only when a trainer runs: `modlab analyze` imports this module (resolve_precision) without it
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    from modlab.training.callbacks import LastCheckpointAtEnd, ParamSummary, PreemptionCheckpoint, ProgressLog
    from modlab.training.checkpoint_io import AtomicCheckpointIO

    t, cb = trainer_cfg, callbacks_cfg
    callbacks = []
    if cb is None or cb.progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    interval = cb.progress_interval_s if cb is not None else PROGRESS_INTERVAL_S
    if interval > 0:  # evaluation too: a real model's test loop can run for many minutes
        callbacks.append(ProgressLog(interval))
    if training and cb is not None:
        if cb.model_summary:
            callbacks.append(ParamSummary(max_depth=2))
        if cb.checkpoint and not t.fast_dev_run:
            best_and_last = ModelCheckpoint(
                # no "=" in the name: Hydra's override grammar would reject ckpt_path=.../best-step=N.ckpt
                dirpath=out_dir / "checkpoints",
                filename="best-step{step}",
                auto_insert_metric_name=False,
                monitor=cb.monitor,
                mode="min",
                save_top_k=1,
                save_last=True,
                enable_version_counter=False,  # one last.ckpt, whichever callback wrote it
            )
            callbacks += [best_and_last, LastCheckpointAtEnd(best_and_last)]
            # SLURM's pre-emption warning (USR2) saves last.ckpt at the step it arrives in
            callbacks.append(PreemptionCheckpoint(out_dir / "checkpoints" / "last.ckpt"))
            if cb.checkpoint_every_n_steps:  # last.ckpt between validations too (what resume= continues)
                callbacks.append(
                    ModelCheckpoint(
                        dirpath=out_dir / "checkpoints",
                        every_n_train_steps=cb.checkpoint_every_n_steps,
                        save_top_k=0,
                        save_last=True,
                        enable_version_counter=False,
                    )
                )
        if cb.lr_monitor and logger_cfg.kind != "none":
            callbacks.append(LearningRateMonitor(logging_interval="step"))
    if training:
        from modlab.training.guards import NonFiniteGuard

        callbacks += [NonFiniteGuard(skip=t.skip_nonfinite), resume_state_callback()]
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t.accelerator} but torch sees no CUDA GPU here (trainer=cpu, ddp_cpu)")
    logger = make_logger(logger_cfg.kind, out_dir, experiment, resume_step)
    strategy = t.strategy
    if strategy == "fsdp" and model is not None:
        strategy = fsdp_strategy(model)
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy,
        num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        max_steps=t.max_steps,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches or 1.0,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val or None,
        fast_dev_run=t.fast_dev_run or False,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
        default_root_dir=out_dir,
        plugins=[AtomicCheckpointIO()],
    )


def make_logger(kind: str, out_dir: Path, experiment: str = "modlab", resume_step: int | None = None):
    """The Lightning logger `logger=<kind>` names, writing into the run directory (False: none).
    Each keeps its files under the run directory and contacts no server (`LoggerConfig` has
    checked that an optional one's package is installed). `resume_step`: the run continues from a
    checkpoint of that global step (`resume=`, a requeued job)."""
    if kind == "csv":
        return csv_logger(out_dir, resume_step)
    if kind == "tensorboard":
        # Lightning only when a trainer runs: `modlab analyze` imports this module (resolve_precision) without it
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=out_dir, name="", version="", default_hp_metric=False)
    if kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        # MLflow 3 reports usage to its telemetry server unless told not to: nothing leaves the machine
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # MLflow >= 3.x refuses the file store (in "maintenance mode") unless allowed; it is the one
        # backend that needs no database package and leaves plain files (metrics/<key>) in the run dir
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # a local file store in the run directory (`mlflow ui --backend-store-uri <run dir>/mlruns`)
        return MLFlowLogger(experiment_name=experiment, tracking_uri=(Path(out_dir).resolve() / "mlruns").as_uri())
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        # offline, whatever the environment says (WANDB_MODE=online would make wandb.init log in):
        # the run goes to <run dir>/wandb/offline-run-*/ and `wandb sync` uploads it later
        os.environ["WANDB_MODE"] = "offline"
        return WandbLogger(project=experiment, save_dir=out_dir, offline=True)
    return False


def csv_logger(out_dir: Path, resume_step: int | None = None):
    """Lightning's CSVLogger writing `<out_dir>/metrics.csv`, every row as it is logged (a killed
    run leaves on disk all it logged, not only what the last flush of 100 steps wrote). A resumed
    run keeps the rows logged before its checkpoint and logs the steps from there on again, so its
    metrics.csv is that of an uninterrupted run (CSVLogger would start the file afresh)."""
    # Lightning only when a trainer runs: `modlab analyze` imports this module (resolve_precision) without it
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    if resume_step is None:
        return CSVLogger(save_dir=out_dir, name="", version="", flush_logs_every_n_steps=1)

    class ResumedCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                kept = logged_rows_before(Path(self.log_dir) / "metrics.csv", resume_step)
                writer = CSVLogger.experiment.fget(self)  # creating it deletes metrics.csv
                writer.metrics[:0] = kept
                writer.save()
            return self._experiment

    return ResumedCSVLogger(save_dir=out_dir, name="", version="", flush_logs_every_n_steps=1)


def close_logger(logger) -> None:
    """End the logger's run once the command is done, so that the next run in the same process (a
    sweep's next job, an Optuna trial) starts its own instead of logging into this one."""
    if type(logger).__name__ == "WandbLogger":
        # optional logger extras: imported when that logger is chosen
        import wandb

        wandb.finish()  # a no-op where no run was started (ranks other than 0)


def router_metrics(trainer) -> dict[str, float]:
    """A routed run's routers for metrics.json: the last validation's `val/router_*` (averaged over
    its batches: agreement, recall and kept share of the causal decision, logit scale, weight
    gradient) and the last training step's `train/router_*`."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/router_", "train/router_"))}


def flatten_test_results(results: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        out.update({k: float(v) for k, v in r.items()})
    return out


def tested_checkpoint(trainer, callbacks_cfg) -> tuple[str | None, int]:
    """What `modlab train` tests after fit, and its optimiser step: the best checkpoint by
    `callbacks.monitor` (Lightning validates, and so checkpoints, only every val_check_interval
    steps), or with `callbacks.test_checkpoint=last` (or no checkpoint) the weights at the end of
    training (None: the module as it is)."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback else ""
    if not best or getattr(callbacks_cfg, "test_checkpoint", "best") == "last":
        return None, trainer.global_step

    return best, int(load_checkpoint_file(best, mmap=True).get("global_step", -1))


def fit_and_test(family, run, out_dir: Path) -> tuple[dict, bool]:
    """`modlab train`: build the family's module and data, fit, test the best (or last) weights. Returns
    the metrics for metrics.json (test metrics, what the family adds, steps and seconds) and
    whether this process is rank 0 (the one that writes files)."""
    # Lightning only when a trainer runs: `modlab analyze` imports this module (resolve_precision) without it
    import lightning as L

    L.seed_everything(run.seed, workers=True, verbose=False)
    resume_from = resume_step = None
    if getattr(run, "resume", None):
        resume_from = resume_target(run.resume)[1]
        resume_step = check_resume_checkpoint(resume_from)
    module, datamodule = family.build(run)
    trainer = build_trainer(
        run.trainer,
        run.callbacks,
        run.logger,
        out_dir,
        model=module,
        experiment=run.experiment_name,
        resume_step=resume_step,
    )
    described = family.describe(module)
    log.info(
        "training %s (%s, seed %d) in %s",
        run.experiment_name,
        ", ".join(f"{k} {v:,}" for k, v in described.items()),
        run.seed,
        out_dir,
    )
    start = time.perf_counter()
    if resume_from is not None:
        log.info("resuming from %s at step %d", resume_from, resume_step)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    except RuntimeError as e:
        if resume_from is None or "loading state_dict" not in str(e):
            raise
        raise CheckpointError(
            f"resume checkpoint '{resume_from}' does not fit this model: {str(e).splitlines()[-1].strip()}"
        ) from None
    train_seconds = time.perf_counter() - start
    extra = family.after_fit(module, trainer, out_dir)
    ckpt, tested_step = tested_checkpoint(trainer, run.callbacks)
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    metrics = {
        **flatten_test_results(results),
        **extra,
        **described,
        "train_seconds": round(train_seconds, 2),
        "train/steps": trainer.global_step,
        "test/checkpoint_step": tested_step,  # the optimiser step of the weights the test ran
    }
    if run.trainer.skip_nonfinite:
        from modlab.training.guards import NonFiniteGuard

        metrics["train/skipped_steps"] = next(c.skipped for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    # what only the tested (best) checkpoint knows, e.g. a router file of its routers
    metrics.update(family.after_test(module, trainer, out_dir, metrics) if trainer.is_global_zero else {})
    close_logger(trainer.logger)
    return metrics, trainer.is_global_zero


def test_module(module, datamodule, trainer_cfg, logger_cfg, out_dir: Path) -> dict:
    """`modlab eval` of a LightningModule: its test metrics."""
    trainer = build_trainer(trainer_cfg, None, logger_cfg, out_dir, training=False)
    results = flatten_test_results(trainer.test(module, datamodule=datamodule, verbose=False))
    close_logger(trainer.logger)
    return results
