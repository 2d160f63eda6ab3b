"""`modlab train` / `modlab eval` for causal LMs (task=lm): pretraining the tiny LM, Router-Tuning
(MindSkip) of a pretrained LM or a Hugging Face model, and their evaluation."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from modlab.cli.runtime import (
    build_trainer,
    flatten_test_results,
    log,
    print_summary,
    resolve_precision,
    run_dir,
    write_metrics,
)
from modlab.errors import ConfigError
from modlab.models.config import ModelConfig

ROUTER_FILE = "routers.safetensors"


def _base_of(c) -> tuple[ModelConfig, str | None]:
    """The model config to build and the pretrained base checkpoint (router tuning of a native
    LM takes both from init_from; its base's architecture wins over the `model` group)."""
    if c.model.arch not in ("lm", "hf"):
        raise ConfigError(f"task=lm needs a causal LM (model=lm or model=hf_causal_lm), not model.arch={c.model.arch}")
    if not c.mindskip.enabled or c.model.arch == "hf":
        if c.mindskip.enabled and c.init_from:
            raise ConfigError("init_from is for native LMs; a Hugging Face model's base is model.path")
        return c.model, None
    if not c.init_from:
        raise ConfigError("router tuning a native LM needs init_from=<an lm_pretrain checkpoint>")
    from modlab.tasks.checkpoint import read_pretrained_lm_checkpoint

    ckpt = read_pretrained_lm_checkpoint(c.init_from, "init_from")
    return ModelConfig(**ckpt["hyper_parameters"]["model"]), str(Path(c.init_from).resolve())


def train_lm(c) -> dict:
    import lightning as L

    from modlab.mindskip.router_file import save_routers
    from modlab.tasks.lm import LMModule, load_lm_weights
    from modlab.tasks.text_datamodule import TextDataModule

    out = run_dir()
    model_cfg, base = _base_of(c)
    L.seed_everything(c.seed, workers=True, verbose=False)
    module = LMModule.from_configs(model_cfg, c.data, c.task, c.eval, c.mindskip, base=base, seed=c.seed)
    if c.init_from and base is None:  # continue pretraining from an LM checkpoint
        load_lm_weights(module.lm, c.init_from)
    dm = TextDataModule(c.data, c.eval, module.tokenizer)
    trainer = build_trainer(c.trainer, c.callbacks, c.logger, out)
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info(
        "training %s (%s parameters, %s trained, seed %d) in %s",
        c.experiment_name,
        f"{module.lm.num_params():,}",
        f"{trained:,}",
        c.seed,
        out,
    )

    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_seconds = time.perf_counter() - start

    ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, datamodule=dm, ckpt_path=ckpt or None, verbose=False)
    metrics = {
        **flatten_test_results(results),
        "params": module.lm.num_params(),
        "params_trained": trained,
        "train_seconds": round(train_seconds, 2),
        "train/steps": trainer.global_step,
    }
    if module.skip is not None:
        metrics["test/ppl_increase"] = metrics["test/ppl"] / metrics["test/ppl_base"] - 1
    if trainer.is_global_zero:
        if module.skip is not None:  # the best checkpoint's routers (trainer.test loaded them)
            metrics["routers"] = str(save_routers(module.skip, out / ROUTER_FILE, module.router_info()))
        write_metrics(out, metrics)
        print_summary(f"modlab train {c.experiment_name}", metrics, out)
    return metrics


def load_routed_lm(ckpt_path: str):
    """An LMModule from a Lightning LM checkpoint or a routers.safetensors file (whose metadata
    says which base to rebuild)."""
    from modlab.tasks.lm import LMModule, load_lm_module

    if not str(ckpt_path).endswith(".safetensors"):
        return load_lm_module(ckpt_path)
    from modlab.mindskip.router_file import load_routers, read_routers
    from modlab.tasks.config import EvalConfig, TaskConfig

    _, info = read_routers(ckpt_path)
    module = LMModule(
        info["model"],
        info["data"],
        {**asdict(TaskConfig()), "name": "lm"},
        asdict(EvalConfig()),
        info["mindskip"],
        base=info["base"],
    )
    load_routers(module.skip, ckpt_path)
    return module.eval()


def evaluate_lm(c) -> dict:
    import lightning as L

    from modlab.mindskip.evaluate import evaluate_routed_lm
    from modlab.mindskip.gate import MindSkip
    from modlab.tasks.text_datamodule import TextDataModule

    module = load_routed_lm(c.ckpt_path)
    out = run_dir()
    L.seed_everything(c.seed, workers=True, verbose=False)
    e = c.eval
    data_cfg = replace(module.data_cfg, lm_files=list(module.data_cfg.lm_files))
    dm = TextDataModule(data_cfg, e, module.tokenizer)
    skip = module.skip if module.skip is not None else MindSkip(module.lm, [])  # a base alone: nothing routed
    autocast = resolve_precision(c.trainer.precision, c.trainer.accelerator) == "bf16-mixed"
    prompts = dm.prompts(e.speed_prompts, e.speed_context) if e.speed_prompts else []
    metrics = evaluate_routed_lm(
        module.lm,
        skip,
        list(dm.test_dataloader()),
        dm.calibration_batches(module.skip_cfg.calibration_rows),
        prompts,
        e,
        module.skip_cfg.drop_candidates,
        autocast,
    )
    metrics.update(
        {
            "params": module.lm.num_params(),
            "ckpt_path": c.ckpt_path,
            "precision": "bf16-mixed" if autocast else "32-true",
        }
    )
    write_metrics(out, metrics)
    print_summary("modlab eval", metrics, out)
    return metrics
