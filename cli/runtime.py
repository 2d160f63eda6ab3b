"""What every command shares: run directory, precision, Trainer, checkpoints, metrics.json."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch

from modlab.errors import CheckpointError

log = logging.getLogger("modlab")


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16 autocast where the hardware multiplies bf16 fast, else full fp32."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    try:
        fast_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        fast_bf16 = False
    return "bf16-mixed" if fast_bf16 else "32-true"


def build_trainer(trainer_cfg, callbacks_cfg, logger_cfg, out_dir: Path, training: bool = True):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichModelSummary, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    t = trainer_cfg
    callbacks = []
    if callbacks_cfg is None or callbacks_cfg.progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    if training and callbacks_cfg is not None:
        if callbacks_cfg.model_summary:
            callbacks.append(RichModelSummary(max_depth=2))
        if callbacks_cfg.checkpoint and not t.fast_dev_run:
            callbacks.append(
                ModelCheckpoint(
                    # no "=" in the name: Hydra's override grammar would reject ckpt_path=.../best-step=N.ckpt
                    dirpath=out_dir / "checkpoints",
                    filename="best-step{step}",
                    auto_insert_metric_name=False,
                    monitor=callbacks_cfg.monitor,
                    mode="min",
                    save_top_k=1,
                    save_last=True,
                )
            )
        if callbacks_cfg.lr_monitor and logger_cfg.kind != "none":
            callbacks.append(LearningRateMonitor(logging_interval="step"))
    logger = CSVLogger(save_dir=out_dir, name="", version="") if logger_cfg.kind == "csv" else False
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
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
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        enable_model_summary=False,
        default_root_dir=out_dir,
    )


def read_unified_checkpoint(ckpt_path: str) -> dict:
    """The raw checkpoint dict of a modlab unified model, or a one-line CheckpointError."""
    from modlab.tasks.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(ckpt_path)
    if not {"state_dict", "hyper_parameters", "image_tokenizer"} <= set(ckpt):
        raise CheckpointError(f"checkpoint '{ckpt_path}' is not a modlab unified-model checkpoint")
    return ckpt


def init_from_checkpoint(module, ckpt_path: str) -> None:
    """Fine-tuning start: copy a (dense or routed) checkpoint's weights into `module`, whose
    routed layers wrap the same blocks. Routers absent from the checkpoint keep their init."""
    ckpt = read_unified_checkpoint(ckpt_path)
    theirs, ours = ckpt["hyper_parameters"], module.hparams
    if theirs.get("model") != ours["model"]:
        raise CheckpointError(f"init_from '{ckpt_path}' has a different model config ({theirs.get('model')})")
    tokenizer_keys = ("image_tokenizer", "levels", "codebook_size", "patch")
    if any(theirs["data"].get(k) != ours["data"][k] for k in tokenizer_keys):
        raise CheckpointError(f"init_from '{ckpt_path}' was trained with another image tokenizer")
    source = {dense_key(k): v for k, v in ckpt["state_dict"].items() if ".router." not in k}
    target = module.state_dict()
    by_dense_key = {dense_key(k): k for k in target}
    missing = [k for k in by_dense_key if k not in source and ".router." not in k]
    if missing or any(k not in by_dense_key for k in source):
        raise CheckpointError(f"init_from '{ckpt_path}' does not fit this model (e.g. {(missing or list(source))[0]})")
    for k, v in source.items():
        if target[by_dense_key[k]].shape != v.shape:
            raise CheckpointError(
                f"init_from '{ckpt_path}': {k} has shape {tuple(v.shape)}, the model needs {tuple(target[by_dense_key[k]].shape)}"
            )
    module.load_state_dict({by_dense_key[k]: v for k, v in source.items()}, strict=False)
    module.on_load_checkpoint(ckpt)  # the image tokenizer the weights were trained with


def dense_key(key: str) -> str:
    """A routed layer's wrapped block is `blocks.i.block.*`; the dense name is `blocks.i.*`."""
    return re.sub(r"(blocks\.\d+)\.block\.", r"\1.", key)


def load_unified_module(ckpt_path: str):
    """A UnifiedModule from a modlab checkpoint, with one-line errors for every way it can fail."""
    from modlab.tasks.unified import UnifiedModule

    ckpt = read_unified_checkpoint(ckpt_path)
    try:
        module = UnifiedModule(**ckpt["hyper_parameters"])
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{ckpt_path}' does not fit this version of modlab: {str(e).splitlines()[0]}"
        ) from None
    return module.eval()


def flatten_test_results(results: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        out.update({k: float(v) for k, v in r.items()})
    return out


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    path = out_dir / "metrics.json"
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return path


def write_csv(rows: list[dict], path: Path) -> Path:
    """A list of flat dicts as CSV (columns in first-seen order; lists are written as JSON)."""
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return path


def print_summary(title: str, metrics: dict, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        v = metrics[k]
        table.add_row(k, f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
    console = Console()
    console.print(table)
    console.print(f"run directory: [bold]{out_dir}[/bold]")
