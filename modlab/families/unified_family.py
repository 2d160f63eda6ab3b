"""The native unified (text + image) families: Show-o-like (`showo`) and Emu3-like (`emu3`).

Both train with the `unified` objective (modlab.training.unified.UnifiedModule) on digits or digit
scenes, route tokens with MoD / UniMoD, generate images and answer questions; they differ only in
the model class (attention mask, image objective, sampler).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from modlab.analysis.calibration import calibration_batches
from modlab.analysis.showo_metrics import showo_task_metrics
from modlab.analysis.subject import showo_subject
from modlab.evaluation.samples import generate_samples
from modlab.families.model_family import AnalysisTarget, ModelFamily, PlanSpec
from modlab.training.checkpoint import init_from_checkpoint
from modlab.training.trainer import router_metrics, test_module


class UnifiedFamily(ModelFamily):
    def __init__(self, name: str, model_class: str, unimod_experiments: dict[str, str]):
        """`unimod_experiments` {data.kind: experiment}: what trains with task routers (the
        command `analyze redundancy` prints beside the routing plan it writes)."""
        self.name, self._model_class, self.unimod_experiments = name, model_class, unimod_experiments

    @property
    def model_class(self):
        module, _, attr = self._model_class.partition(":")
        return getattr(importlib.import_module(module), attr)

    def build_model(self, model_cfg, space, n_image_tokens: int):
        return self.model_class(model_cfg, space, n_image_tokens)

    # ---- train -----------------------------------------------------------------------------------

    def build(self, run):
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.digits_datamodule import DigitsDataModule
        from modlab.training.unified import UnifiedModule

        module = UnifiedModule.from_configs(run.model, run.data, run.objective, run.eval, run.routing, seed=run.seed)
        if run.init_from:
            init_from_checkpoint(module, run.init_from)  # also takes the checkpoint's fitted image tokenizer
        # the data module fits the image tokenizer on the training digits unless the checkpoint has one
        dm = DigitsDataModule(run.data, run.eval, image_tokenizer=module.image_tokenizer if run.init_from else None)
        module.image_tokenizer = dm.image_tokenizer
        return module, dm

    def describe(self, module) -> dict:
        return {"params": module.model.num_params()}

    def after_fit(self, module, trainer, out_dir: Path) -> dict:
        return {**module.flops_summary(), **router_metrics(trainer)}

    def dry_run(self, run) -> dict:
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.unified import probe_training_flops

        module, dm = self.build(run)
        return {**self.describe(module), **probe_training_flops(module, dm)}

    # ---- eval / generate -------------------------------------------------------------------------

    def load(self, ckpt_path: str):
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.unified import load_unified_module

        return load_unified_module(ckpt_path)

    def evaluate(self, module, run, out_dir: Path) -> dict:
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.digits_datamodule import DigitsDataModule

        module.eval_cfg = run.eval
        dm = DigitsDataModule(module.data_cfg, run.eval, image_tokenizer=module.image_tokenizer)
        metrics = test_module(module, dm, run.trainer, run.logger, out_dir)
        return {**metrics, "params": module.model.num_params(), "ckpt_path": run.ckpt_path}

    def generate(self, module, run, out_dir: Path) -> dict:
        return generate_samples(module, run, out_dir)

    # ---- analyze ---------------------------------------------------------------------------------

    def analysis_target(self, module, calibration, seed: int) -> AnalysisTarget:
        c = calibration
        batches = calibration_batches(
            module.data_cfg, module.image_tokenizer, c.tasks, c.n_per_task, c.seed, c.split, c.batch_size
        )

        def task_metrics(importance_cfg, tasks) -> dict:
            """MMU answers and T2I samples, re-scored with each layer dropped."""
            i = importance_cfg
            return showo_task_metrics(
                module.model,
                module.space,
                module.image_tokenizer,
                module.data_cfg.split_seed,
                c.split,
                i.mmu_prompts,
                i.t2i_per_digit,
                i.maskgit_steps,
                module.eval_cfg.guidance,
                i.classifier_epochs,
                seed=seed,
                tasks=tasks,
                data_cfg=module.data_cfg,
            )

        experiment = self.unimod_experiments.get(module.data_cfg.kind, next(iter(self.unimod_experiments.values())))
        plan = PlanSpec(
            module.data_cfg,
            f"modlab train +experiment={experiment}",
            model_cfg=module.model_cfg,
            vocab_size=module.space.vocab_size,
        )
        return AnalysisTarget(module, showo_subject(module.model), batches, task_metrics=task_metrics, plan=plan)


SHOWO = UnifiedFamily("showo", "modlab.models.showo:ShowO", {"digits": "showo_unimod", "scenes": "scenes_unimod"})
EMU3 = UnifiedFamily("emu3", "modlab.models.emu3:Emu3", {"digits": "emu3_unimod", "scenes": "scenes_emu3_unimod"})
