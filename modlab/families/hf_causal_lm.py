"""The Hugging Face causal-LM family (`hf`): a local `save_pretrained` directory (model.path),
router-tuned with MindSkip and analysed without a modlab checkpoint. Everything else is the
native causal LM's (modlab.families.causal_lm)."""

from __future__ import annotations

from modlab.errors import ConfigError
from modlab.families.causal_lm import CausalLMFamily, LoadedLM


class HFCausalLMFamily(CausalLMFamily):
    name = "hf"

    def new_lm(self, model_cfg):
        from modlab.models.hf_causal_lm import load_hf_causal_lm

        return load_hf_causal_lm(model_cfg.path)

    def base_of(self, run):
        """The weights come from model.path; init_from is for native LMs."""
        if run.mindskip.enabled and run.init_from:
            raise ConfigError("init_from is for native LMs; a Hugging Face model's base is model.path")
        return run.model, None

    def load_pretrained(self, model_cfg) -> LoadedLM:
        """The directory itself, its text read with the default text settings (96-token windows
        of Python's docs)."""
        from modlab.data.config import DataConfig

        lm, tokenizer = self.new_lm(model_cfg)
        return LoadedLM(lm.eval(), tokenizer, DataConfig(name="text"))


HF_CAUSAL_LM = HFCausalLMFamily()
