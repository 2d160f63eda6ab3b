"""The Hugging Face causal-LM family (`hf`): a local `save_pretrained` directory (model.path),
fine-tuned with or without Mixture-of-Depths token routing in its decoder layers (`routing=mod`),
router-tuned with MindSkip, and analysed without a modlab checkpoint. Everything else is the
native causal LM's (modlab.families.causal_lm_family)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from modlab.data.config import DataConfig
from modlab.errors import ConfigError
from modlab.families.causal_lm_family import CausalLMFamily, LoadedLM
from modlab.families.model_family import PlanSpec
from modlab.models.hf_causal_lm import load_hf_causal_lm, resolve_dtype
from modlab.routing.install import threshold_routing
from modlab.training.checkpoint import read_lm_checkpoint
from modlab.training.trainer import router_metrics, test_module


@dataclass
class LoadedRoutedLM(LoadedLM):
    routing: object = None  # the HFRouting of a token-routed checkpoint


class HFCausalLMFamily(CausalLMFamily):
    name = "hf"

    def new_lm(self, model_cfg):
        return load_hf_causal_lm(model_cfg.path, model_cfg.dtype)

    def base_of(self, run):
        """The weights come from model.path; init_from is for native LMs."""
        if run.mindskip.enabled and run.init_from:
            raise ConfigError("init_from is for native LMs; a Hugging Face model's base is model.path")
        return run.model, None

    # ---- train -----------------------------------------------------------------------------------

    def build(self, run):
        """An HFLMModule (token routing, Router-Tuning or plain fine-tuning) in the weights dtype
        `model.dtype` resolves to on the trainer's device (recorded in the checkpoint)."""
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.training.hf_lm import HFLMModule
        from modlab.training.text_datamodule import TextDataModule

        if run.init_from:
            raise ConfigError("init_from is for native LMs; a Hugging Face model's base is model.path")
        model_cfg = replace(run.model, dtype=resolve_dtype(run.model.dtype, run.trainer.accelerator))
        module = HFLMModule.from_run(run, model_cfg)
        return module, TextDataModule(run.data, run.eval, module.tokenizer)

    def after_fit(self, module, trainer, out_dir: Path) -> dict:
        return {**module.flops_summary(), **router_metrics(trainer), "dtype": module.model_cfg.dtype}

    def dry_run(self, run) -> dict:
        """What a run would cost: parameters, and for a token-routed model the training FLOPs of
        one step on a training batch (routed, dense, ratio), at the schedule's first step."""
        module, dm = self.build(run)
        out = self.describe(module)
        if module.routing is not None:
            # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
            from modlab.routing.hf_flops import train_step_flops

            batch = next(iter(dm.train_dataloader()))
            module.train()
            module.on_train_batch_start(batch, 0)
            with torch.no_grad():
                module.losses(batch)
            B, T = batch["ids"].shape
            routed = float(train_step_flops(module.lm.hf, B, T, module.last_trace.flops_groups()[0]))
            dense = float(train_step_flops(module.lm.hf, B, T))
            out["train/flops_per_step"], out["train/flops_per_step_dense"] = routed, dense
            out["train/flops_ratio"] = routed / dense
        return out

    # ---- eval ------------------------------------------------------------------------------------

    def load(self, ckpt_path: str):
        if str(ckpt_path).endswith(".safetensors"):  # a MindSkip router file
            return super().load(ckpt_path)
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.training.hf_lm import load_hf_lm_module

        return load_hf_lm_module(ckpt_path)

    def evaluate(self, module, run, out_dir: Path) -> dict:
        """A token-routed model: perplexity under the causal decision (and top-k, and dense),
        capacity, FLOPs ratio and batch-1 decoding with the compact KV cache; otherwise as the
        native LM (MindSkip: routed vs base vs static drop)."""
        if getattr(module, "routing", None) is None:
            return super().evaluate(module, run, out_dir)
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.training.hf_lm import decode_speed
        from modlab.training.text_datamodule import TextDataModule

        e = run.eval
        data_cfg = replace(module.data_cfg, lm_files=list(module.data_cfg.lm_files))
        dm = TextDataModule(data_cfg, e, module.tokenizer)
        metrics = test_module(module, dm, run.trainer, run.logger, out_dir)
        if e.speed_prompts:
            prompts = dm.prompts(e.speed_prompts, e.speed_context)
            metrics.update(decode_speed(module, prompts, e.speed_new_tokens, e.speed_repeats))
        return {**metrics, **self.describe(module), "dtype": module.model_cfg.dtype, "ckpt_path": run.ckpt_path}

    def harness_variants(self, module):
        """A token-routed model: routed = the causal (threshold) routing decoding uses, base = the
        same weights unrouted; otherwise as the native LM (MindSkip gates or none)."""
        if getattr(module, "routing", None) is None:
            return super().harness_variants(module)
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.routing.hf_routed_layer import unrouted

        lm = module.lm

        def routed(ids):
            with threshold_routing(lm.hf):
                return lm(ids)

        def base(ids):
            with unrouted(module.routing):
                return lm(ids)

        return {"base": base, "routed": routed}, module.tokenizer, next(module.parameters()).device

    # ---- analyze ---------------------------------------------------------------------------------

    def load_for_analysis(self, ckpt_path: str):
        """A token-routed (MoD) checkpoint is analysed unrouted: every token runs every layer with
        the fine-tuned weights, so each layer is seen with its full sequence; others as the native LM."""
        if str(ckpt_path).endswith(".safetensors"):
            return super().load_for_analysis(ckpt_path)
        hp = read_lm_checkpoint(ckpt_path)["hyper_parameters"]
        if (hp.get("routing") or {}).get("kind", "dense") == "dense":
            return super().load_for_analysis(ckpt_path)
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.training.hf_lm import load_hf_lm_module

        module = load_hf_lm_module(ckpt_path)
        return LoadedRoutedLM(module.lm, module.tokenizer, module.data_cfg, module.routing)

    def analysis_target(self, loaded, calibration, seed: int):
        target = super().analysis_target(loaded, calibration, seed)
        routing = getattr(loaded, "routing", None)
        if routing is not None:
            # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
            from modlab.routing.hf_routed_layer import unrouted

            run = target.subject.run

            def run_unrouted(batch):
                with unrouted(routing):
                    return run(batch)

            target.subject.run = run_unrouted
            target.info["routed_layers_analysed"] = "unrouted: every token runs every layer"
        target.plan = self.plan_spec(loaded)
        target.info.pop("routing_plan_skipped", None)
        return target

    def plan_spec(self, loaded) -> PlanSpec:
        """A MoD routing plan (the `lm` task; `routing=mod routing.plan=<file>` trains with it) at
        the FLOPs target, counted by modlab.routing.hf_flops on the model itself. The layers that
        size transformers' decode masks (layer 0, the first of each attention type) keep every
        token, as the routed wrapper requires."""
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.routing.hf_flops import planned_flops_ratio

        hf = loaded.lm.hf
        lm_rows = replace(loaded.data_cfg, batch_size={"lm": max(1, loaded.data_cfg.batch_size.get("lm", 1))})

        def flops_ratio(layer_caps: dict, workload: dict) -> float:
            return planned_flops_ratio(hf, layer_caps.get("lm", {}), list(workload.values()))

        return PlanSpec(
            lm_rows,
            f"modlab train +experiment=hf_mod model.path={loaded.lm.path}",
            tasks=("lm",),
            flops_ratio=flops_ratio,
            exclude_layers=frozenset(loaded.lm.always_runs),
        )

    def load_pretrained(self, model_cfg) -> LoadedLM:
        """The directory itself, its text read with the default text settings (96-token windows
        of Python's docs)."""
        lm, tokenizer = self.new_lm(model_cfg)
        return LoadedLM(lm.eval(), tokenizer, DataConfig(name="text"))


HF_CAUSAL_LM = HFCausalLMFamily()
