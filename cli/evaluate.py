"""`modlab eval ckpt_path=...`: the test metrics of a checkpoint, written to metrics.json."""

from __future__ import annotations

from omegaconf import DictConfig

from modlab.cli.runtime import build_trainer, flatten_test_results, load_unified_module, print_summary, run_dir, write_metrics
from modlab.cli.schema import validate


def evaluate(cfg: DictConfig) -> dict:
    c = validate(cfg)
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
