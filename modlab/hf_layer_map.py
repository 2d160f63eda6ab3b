"""Where things live inside each supported Hugging Face decoder-only family (transformers 5.x).

Every per-family difference modlab needs is data in `HF_FAMILIES`, keyed by `config.model_type`;
code that wraps layers (token routing, MindSkip, the analyses) reads these entries and never
tests family names itself. Entries were read off the installed transformers 5.24 modeling files:

- every family's decoder layers sit at `<CausalLM>.model.layers` and return a plain tensor (the
  4.x tuple `(hidden_states, attn_weights)` is gone); Chameleon-style layers that return a tuple
  are described by `layer_returns_tuple`;
- Phi runs attention and MLP in parallel off one LayerNorm (`x + attn(ln(x)) + mlp(ln(x))`);
- sliding-window attention is marked per layer in `config.layer_types` (Qwen2, Qwen3, Gemma 2,
  Gemma 3), or is one `config.sliding_window` for every layer (Mistral, Phi-3; None = off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from modlab.errors import ConfigError

SLIDING_NONE, SLIDING_PER_LAYER_TYPE, SLIDING_ALL_LAYERS = "none", "layer_types", "all_layers"


@dataclass(frozen=True)
class HFFamily:
    model_type: str  # config.model_type
    config_class: str  # transformers class names, for building tiny random models (modlab.models.hf_tiny)
    causal_lm_class: str
    layers: str = "model.layers"  # attribute path from the CausalLM to its ModuleList of decoder layers
    final_norm: str = "model.norm"
    attention: str = "self_attn"  # attribute of a decoder layer
    input_norm: str = "input_layernorm"  # the norm the attention reads
    mlp: str = "mlp"  # attribute of a decoder layer
    mlp_norm: str = "post_attention_layernorm"  # the norm the MLP reads (input_norm where they run in parallel)
    # Gemma 2 / 3 also normalise each branch's output before the residual add
    attn_out_norm: str | None = None
    mlp_out_norm: str | None = None
    parallel_attn_mlp: bool = False  # attention and MLP both read input_norm(x); one residual add
    layer_returns_tuple: bool = False  # a decoder layer returns (hidden_states, ...) rather than a tensor
    sliding_window: str = SLIDING_NONE  # how sliding-window layers are marked (see module docstring)


# Gemma 2 / 3: x + post_attention_layernorm(attn(input_layernorm(x))), then
# h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))
GEMMA2_NORMS = dict(
    mlp_norm="pre_feedforward_layernorm",
    attn_out_norm="post_attention_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
)

HF_FAMILIES: dict[str, HFFamily] = {
    f.model_type: f
    for f in (
        HFFamily("llama", "LlamaConfig", "LlamaForCausalLM"),
        HFFamily("mistral", "MistralConfig", "MistralForCausalLM", sliding_window=SLIDING_ALL_LAYERS),
        HFFamily("qwen2", "Qwen2Config", "Qwen2ForCausalLM", sliding_window=SLIDING_PER_LAYER_TYPE),
        HFFamily("qwen3", "Qwen3Config", "Qwen3ForCausalLM", sliding_window=SLIDING_PER_LAYER_TYPE),
        HFFamily("gemma", "GemmaConfig", "GemmaForCausalLM"),
        HFFamily("gemma2", "Gemma2Config", "Gemma2ForCausalLM", sliding_window=SLIDING_PER_LAYER_TYPE, **GEMMA2_NORMS),
        HFFamily(
            "gemma3_text",
            "Gemma3TextConfig",
            "Gemma3ForCausalLM",
            sliding_window=SLIDING_PER_LAYER_TYPE,
            **GEMMA2_NORMS,
        ),
        HFFamily(
            "phi",
            "PhiConfig",
            "PhiForCausalLM",
            final_norm="model.final_layernorm",
            mlp_norm="input_layernorm",
            parallel_attn_mlp=True,
        ),
        HFFamily("phi3", "Phi3Config", "Phi3ForCausalLM", sliding_window=SLIDING_ALL_LAYERS),
        # unified (text + image) models: the language decoder sits inside the multimodal model
        HFFamily(
            "emu3",
            "Emu3Config",
            "Emu3ForConditionalGeneration",
            layers="model.text_model.layers",
            final_norm="model.text_model.norm",
        ),
        HFFamily(
            "chameleon",
            "ChameleonConfig",
            "ChameleonForConditionalGeneration",
            layer_returns_tuple=True,  # (hidden_states, attention weights)
        ),
        HFFamily(
            "janus",
            "JanusConfig",
            "JanusForConditionalGeneration",
            layers="model.language_model.layers",
            final_norm="model.language_model.norm",
        ),
    )
}


def hf_family(config) -> HFFamily:
    """The family entry of a transformers config; a one-line ConfigError naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    family = HF_FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(
            f"Hugging Face model type '{model_type}' is not supported; supported: {', '.join(HF_FAMILIES)}"
        )
    return family


def text_config(config):
    """The config of the language decoder: the config itself for a causal LM, its text config for
    a unified model (Emu3, Janus keep sizes there)."""
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if get is not None else config


def resolve_attribute(root: nn.Module, path: str):
    obj = root
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def decoder_layers(model: nn.Module, family: HFFamily | None = None) -> nn.ModuleList:
    """The ModuleList of decoder layers of a transformers CausalLM."""
    family = family or hf_family(model.config)
    return resolve_attribute(model, family.layers)


def layer_sliding_window(config, family: HFFamily, layer_idx: int) -> int | None:
    """The sliding window of layer `layer_idx` (a key at distance >= window is not attended to),
    or None for full causal attention."""
    config = text_config(config)
    window = getattr(config, "sliding_window", None)
    if family.sliding_window == SLIDING_ALL_LAYERS:
        return window
    if family.sliding_window == SLIDING_PER_LAYER_TYPE:
        layer_types = getattr(config, "layer_types", None) or []
        if layer_idx < len(layer_types) and layer_types[layer_idx] == "sliding_attention":
            return window
    return None
