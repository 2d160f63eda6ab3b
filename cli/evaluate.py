"""`modlab eval ckpt_path=...`: the test metrics of a checkpoint, written to metrics.json."""

from __future__ import annotations

from omegaconf import DictConfig

from modlab.cli.runtime import (
    build_trainer,
    flatten_test_results,
    load_unified_module,
    print_summary,
    run_dir,
    write_metrics,
)
from modlab.cli.schema import validate


def evaluate(cfg: DictConfig) -> dict:
    c = validate(cfg)
    if _is_lm(c.ckpt_path):  # causal LMs: perplexity, capacity, static drop, speed
        from modlab.cli.lm import evaluate_lm

        return evaluate_lm(c)
    module = load_unified_module(c.ckpt_path)
    import lightning as L

    from modlab.tasks.digits_datamodule import DigitsDataModule

    out = run_dir()
    L.seed_everything(c.seed, workers=True, verbose=False)
    module.eval_cfg = c.eval
    dm = DigitsDataModule(module.data_cfg, c.eval, image_tokenizer=module.image_tokenizer)
    trainer = build_trainer(c.trainer, None, c.logger, out, training=False)
    results = trainer.test(module, datamodule=dm, verbose=False)
    metrics = {**flatten_test_results(results), "params": module.model.num_params(), "ckpt_path": c.ckpt_path}
    write_metrics(out, metrics)
    print_summary("modlab eval", metrics, out)
    return metrics


def _is_lm(ckpt_path: str) -> bool:
    """A router file, or a checkpoint file that says it holds a causal LM."""
    from pathlib import Path

    from modlab.tasks.checkpoint import is_lm_checkpoint, load_checkpoint_file

    if str(ckpt_path).endswith(".safetensors"):
        return True
    return Path(ckpt_path).is_file() and is_lm_checkpoint(load_checkpoint_file(ckpt_path))
