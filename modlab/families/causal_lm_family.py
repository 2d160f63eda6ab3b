"""The native causal-LM family (`lm`): modlab's tiny byte-level LM, pretrained with the `lm`
objective and router-tuned with MindSkip (a router-tuned checkpoint holds the routers alone and
names its base). The Hugging Face family (modlab.families.hf_causal_lm_family) shares all of this except
where the weights come from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from modlab.analysis.calibration import calibration_batches
from modlab.analysis.subject import lm_subject
from modlab.data.config import DataConfig
from modlab.data.text_tokenizer import ByteTokenizer
from modlab.errors import CheckpointError, ConfigError
from modlab.families.model_family import AnalysisTarget, ModelFamily
from modlab.mindskip.gate import MindSkip
from modlab.mindskip.router_file import load_routers, read_routers, save_routers
from modlab.models.causal_lm import CausalLM
from modlab.models.config import ModelConfig
from modlab.training.checkpoint import load_pretrained_lm, read_pretrained_lm_checkpoint
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.trainer import resolve_precision

ROUTER_FILE = "routers.safetensors"
# modlab's own causal LM has no token routing (MindSkip chooses its own layers); a transformers
# LM does (routing=mod), and `redundancy` writes it a plan (modlab.families.hf_causal_lm_family)
NO_LM_PLAN = (
    "no routing plan for modlab's causal LM: it has no token routing (the ARank table can guide "
    "mindskip.layers); Hugging Face LMs get one (model=hf_causal_lm)"
)


@dataclass
class LoadedLM:
    """A causal LM to analyse, loaded without Lightning."""

    lm: object  # CausalLM or HFCausalLM
    tokenizer: object
    data_cfg: object  # DataConfig: which text, rows of how many tokens


class CausalLMFamily(ModelFamily):
    name = "lm"

    def new_lm(self, model_cfg):
        """A fresh model of this family and its tokenizer."""
        return CausalLM(model_cfg), ByteTokenizer()

    def base_of(self, run):
        """(the model config to build, the pretrained base checkpoint or None). Router tuning a
        native LM takes both from init_from: its base's architecture wins over the `model` group."""
        if not run.mindskip.enabled:
            return run.model, None
        if not run.init_from:
            raise ConfigError("router tuning a native LM needs init_from=<an lm_pretrain checkpoint>")

        ckpt = read_pretrained_lm_checkpoint(run.init_from, "init_from")
        return ModelConfig(**ckpt["hyper_parameters"]["model"]), str(Path(run.init_from).resolve())

    # ---- train -----------------------------------------------------------------------------------

    def build(self, run):
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.lm import LMModule, load_lm_weights
        from modlab.training.text_datamodule import TextDataModule

        model_cfg, base = self.base_of(run)
        module = LMModule.from_configs(
            model_cfg, run.data, run.objective, run.eval, run.mindskip, base=base, seed=run.seed
        )
        if run.init_from and base is None:  # continue pretraining from an LM checkpoint
            load_lm_weights(module.lm, run.init_from)
        return module, TextDataModule(run.data, run.eval, module.tokenizer)

    def describe(self, module) -> dict:
        trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return {"params": module.lm.num_params(), "params_trained": trained}

    def after_test(self, module, trainer, out_dir: Path, metrics: dict) -> dict:
        if module.skip is None:
            return {}

        # the best checkpoint's routers (trainer.test loaded them)
        routers = save_routers(module.skip, Path(out_dir) / ROUTER_FILE, module.router_info())
        return {"test/ppl_increase": metrics["test/ppl"] / metrics["test/ppl_base"] - 1, "routers": str(routers)}

    # ---- eval ------------------------------------------------------------------------------------

    def load(self, ckpt_path: str):
        """An LMModule from a Lightning LM checkpoint or a routers.safetensors file (whose metadata
        says which base to rebuild)."""
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.lm import LMModule, load_lm_module

        if not str(ckpt_path).endswith(".safetensors"):
            return load_lm_module(ckpt_path)

        _, info = read_routers(ckpt_path)
        module = LMModule(
            info["model"],
            info["data"],
            {**asdict(ObjectiveConfig()), "name": "lm"},
            asdict(EvalConfig()),
            info["mindskip"],
            base=info["base"],
        )
        load_routers(module.skip, ckpt_path)
        return module.eval()

    def evaluate(self, module, run, out_dir: Path) -> dict:
        """Perplexity with and without the routers, capacity, the static LLM-Drop baseline, speed."""
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.mindskip.evaluate import evaluate_routed_lm
        from modlab.training.text_datamodule import TextDataModule

        e = run.eval
        data_cfg = replace(module.data_cfg, lm_files=list(module.data_cfg.lm_files))
        dm = TextDataModule(data_cfg, e, module.tokenizer)
        skip = module.skip if module.skip is not None else MindSkip(module.lm, [])  # a base alone: nothing routed
        autocast = resolve_precision(run.trainer.precision, run.trainer.accelerator) == "bf16-mixed"
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
        precision = "bf16-mixed" if autocast else "32-true"
        return {**metrics, "params": module.lm.num_params(), "ckpt_path": run.ckpt_path, "precision": precision}

    def harness_variants(self, module):
        """base: every attention gate open (the pretrained model); routed: with the MindSkip routers."""
        lm, skip = module.lm, module.skip

        def logits_fn(routers: bool):
            def logits(ids):
                if skip is None:
                    return lm(ids)
                with skip.variant(routers=routers), skip.context(valid=None):
                    return lm(ids)

            return logits

        variants = {"base": logits_fn(False)}
        if skip is not None and skip.layers:
            variants["routed"] = logits_fn(True)
        return variants, module.tokenizer, next(module.parameters()).device

    # ---- analyze ---------------------------------------------------------------------------------

    def load_for_analysis(self, ckpt_path: str) -> LoadedLM:
        if str(ckpt_path).endswith(".safetensors"):
            raise CheckpointError(
                f"'{ckpt_path}' is a MindSkip router file; analyse the LM it routes (its base checkpoint)"
            )
        lm, tokenizer, hp = load_pretrained_lm(ckpt_path)  # a router-tuned one is refused: analyse its base
        return LoadedLM(lm, tokenizer, DataConfig(**hp["data"]))

    def analysis_target(self, loaded: LoadedLM, calibration, seed: int) -> AnalysisTarget:
        """One task, `lm`: windows of the held-out text in the model's own tokens."""
        c = calibration
        if "lm" not in c.tasks:
            raise ConfigError(
                f"calibration.tasks {list(c.tasks)} has no 'lm': a causal LM is calibrated on held-out text "
                f"(calibration.tasks=[lm])"
            )
        batches = calibration_batches(
            loaded.data_cfg, None, ["lm"], c.n_per_task, c.seed, c.split, c.batch_size, text_tokenizer=loaded.tokenizer
        )
        return AnalysisTarget(
            loaded,
            lm_subject(loaded.lm),
            batches,
            info={"routing_plan": None, "routing_plan_skipped": NO_LM_PLAN},
        )


CAUSAL_LM = CausalLMFamily()
