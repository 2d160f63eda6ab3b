"""Hugging Face unified families (`hf_emu3`, `hf_chameleon`, `hf_janus`): a transformers text +
image model from a local `save_pretrained` directory (model.path, with its processor), fine-tuned
with UniMoD task routers or MoD in its language decoder layers, evaluated on MMU answers and T2I
images (its own VQ decoder, scored on digits; Chameleon's has none in transformers, so its images
are drawn but not scored: test/t2i_skipped), generating images with causal routing and the
compact KV cache, and analysed per task. Everything the native unified families do is reused
(modlab.families.unified); what differs is the model (modlab.models.hf_unified,
modlab.models.hf_chameleon_janus) and its data (modlab.training.hf_unified_data).
"""

from __future__ import annotations

from pathlib import Path

from modlab.families.base import AnalysisTarget, PlanSpec
from modlab.families.unified import UnifiedFamily


class HFUnifiedFamily(UnifiedFamily):
    def __init__(self, name: str, experiment: str):
        super().__init__(name, "", {"digits": experiment})

    # ---- train -----------------------------------------------------------------------------------

    def build(self, run):
        from modlab.errors import ConfigError
        from modlab.training.hf_unified import HFUnifiedModule
        from modlab.training.hf_unified_data import HFUnifiedDataModule

        if run.init_from:
            raise ConfigError("init_from is for native models; a Hugging Face model's base is model.path")
        if run.data.kind != "digits":
            raise ConfigError(
                f"data.kind={run.data.kind}: Hugging Face unified models train on digits or your images "
                "(data.image_folder=DIR)"
            )
        module = HFUnifiedModule.from_run(run)
        cache = run.data.image_cache or str(Path(run.paths.output_dir) / "cache" / "image_tokens")
        return module, HFUnifiedDataModule(run.data, run.eval, module.model, cache)

    def describe(self, module) -> dict:
        m = module.model
        return {"params": m.num_params(), "vq_params": sum(p.numel() for p in m.codec.vq.parameters())}

    def dry_run(self, run) -> dict:
        from modlab.training.unified import probe_training_flops

        module, dm = self.build(run)
        return {**self.describe(module), **probe_training_flops(module, dm)}

    # ---- eval / generate -------------------------------------------------------------------------

    def load(self, ckpt_path: str):
        from modlab.training.hf_unified import load_hf_unified_module

        return load_hf_unified_module(ckpt_path)

    def evaluate(self, module, run, out_dir: Path) -> dict:
        from modlab.training.hf_unified_data import HFUnifiedDataModule
        from modlab.training.trainer import test_module

        module.eval_cfg = run.eval
        dm = HFUnifiedDataModule(
            module.data_cfg.__class__(**{**vars(module.data_cfg), "image_folder": None}), run.eval, module.model
        )
        metrics = test_module(module, dm, run.trainer, run.logger, out_dir)
        return {**metrics, **self.describe(module), "ckpt_path": run.ckpt_path}

    # ---- analyze ---------------------------------------------------------------------------------

    def analysis_target(self, module, calibration, seed: int) -> AnalysisTarget:
        raise NotImplementedError  # next: per-task analyses on the HF decoder layers


HF_EMU3 = HFUnifiedFamily("hf_emu3", "hf_emu3_unimod")
HF_CHAMELEON = HFUnifiedFamily("hf_chameleon", "hf_chameleon_unimod")
HF_JANUS = HFUnifiedFamily("hf_janus", "hf_janus_unimod")
__all__ = ["HF_CHAMELEON", "HF_EMU3", "HF_JANUS", "PlanSpec"]
