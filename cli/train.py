"""`modlab train`: fit, test the best checkpoint, write metrics.json and a summary table."""

from __future__ import annotations

import time

from omegaconf import DictConfig

from modlab.cli.runtime import (
    build_trainer,
    flatten_test_results,
    init_from_checkpoint,
    log,
    print_summary,
    run_dir,
    write_metrics,
)
from modlab.cli.schema import validate
from modlab.errors import ConfigError


def train(cfg: DictConfig) -> dict:
    c = validate(cfg)
    if c.task.name == "lm":  # causal LMs: pretraining and Router-Tuning (MindSkip)
        from modlab.cli.lm import train_lm

        return train_lm(c)
    if c.model.arch in ("lm", "hf"):
        raise ConfigError(f"model.arch={c.model.arch} is a causal LM: use task=lm (e.g. +experiment=lm_pretrain)")
    import lightning as L

    from modlab.tasks.digits_datamodule import DigitsDataModule
    from modlab.tasks.unified import UnifiedModule

    out = run_dir()
    L.seed_everything(c.seed, workers=True, verbose=False)
    module = UnifiedModule.from_configs(c.model, c.data, c.task, c.eval, c.routing, seed=c.seed)
    if c.init_from:
        init_from_checkpoint(module, c.init_from)  # also takes the checkpoint's fitted image tokenizer
    # the data module fits the image tokenizer on the training digits unless the checkpoint has one
    dm = DigitsDataModule(c.data, c.eval, image_tokenizer=module.image_tokenizer if c.init_from else None)
    module.image_tokenizer = dm.image_tokenizer
    trainer = build_trainer(c.trainer, c.callbacks, c.logger, out)
    log.info(
        "training %s (%s parameters, seed %d) in %s", c.experiment_name, f"{module.model.num_params():,}", c.seed, out
    )

    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_seconds = time.perf_counter() - start

    flops = module.flops_summary()
    # the last validation's agreement of the causal routing decision with top-k (routed runs)
    agreement = {k: float(v) for k, v in trainer.callback_metrics.items() if k == "val/router_agreement"}
    ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, datamodule=dm, ckpt_path=ckpt or None, verbose=False)
    metrics = {
        **flatten_test_results(results),
        **flops,
        **agreement,
        "params": module.model.num_params(),
        "train_seconds": round(train_seconds, 2),
        "train/steps": trainer.global_step,
    }
    if trainer.is_global_zero:
        write_metrics(out, metrics)
        print_summary(f"modlab train {c.experiment_name}", metrics, out)
    return metrics
