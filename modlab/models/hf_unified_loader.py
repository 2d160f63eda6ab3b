"""Loading a Hugging Face unified model (modlab.models.hf_unified) from a local `save_pretrained`
directory: the family its config names, its processor, its weights (in the dtype asked, the VQ
model kept in fp32) and its VQ codec, with one-line errors for every way the directory can be
wrong. Show-o on Phi has a directory layout of its own (modlab.models.hf_showo_unified).
"""

from __future__ import annotations

from pathlib import Path

import torch

from modlab.errors import CheckpointError, ConfigError
from modlab.models.hf_showo_unified import load_hf_showo
from modlab.models.hf_unified import HFEmu3, HFUnifiedModel

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")

# transformers model_type -> its class here ("module:attribute": a family in its own module, imported on use)
FAMILY_CLASSES: dict[str, type | str] = {
    "emu3": HFEmu3,
    "chameleon": "modlab.models.hf_chameleon_janus:HFChameleon",
    "janus": "modlab.models.hf_chameleon_janus:HFJanus",
}
UNIFIED_MODEL_TYPES = tuple(FAMILY_CLASSES)  # the families this module loads


def family_class(model_type: str) -> type:
    cls = FAMILY_CLASSES[model_type]
    if isinstance(cls, str):
        import importlib

        module, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls


def load_hf_unified(path: str, resolution: int = 0, route_tokens=("image",), dtype: str = "float32") -> HFUnifiedModel:
    """A unified model (in eval mode) from a local `save_pretrained` directory with its processor;
    every way the directory can be wrong is a one-line ConfigError / CheckpointError.
    `resolution` 0: the processor's own image size."""
    from modlab.models.hf_causal_lm import TORCH_DTYPES, resolve_dtype

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model.path '{path}' is not a Hugging Face model directory (no config.json)")
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(p)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"model.path '{path}': config.json is not a transformers config ({type(e).__name__})"
        ) from None
    if config.model_type == "phi":  # Show-o on Phi: a directory of its own layout (modlab.models.hf_showo_unified)
        return load_hf_showo(p, config, resolution, tuple(route_tokens), dtype)
    if config.model_type not in FAMILY_CLASSES:
        raise ConfigError(
            f"model.path '{path}' holds a '{config.model_type}' model, not a unified model this family loads "
            f"({', '.join(FAMILY_CLASSES)})"
        )
    if not any((p / f).is_file() for f in PROCESSOR_FILES):
        raise ConfigError(f"model.path '{path}' has no processor (processor_config.json): save the processor there too")
    hf_logging.disable_progress_bar()
    try:
        processor = AutoProcessor.from_pretrained(p)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"model.path '{path}': its processor could not be loaded ({type(e).__name__})") from None
    torch_dtype = TORCH_DTYPES[resolve_dtype(dtype, None)]
    try:
        # loaded in fp32 and cast after: the VQ tokenizer keeps its fp32 weights (ImageCodec runs
        # it in fp32; loading in bf16 would round them and change the codes)
        hf = AutoModelForImageTextToText.from_pretrained(p, dtype=torch.float32, attn_implementation="sdpa")
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"model.path '{path}': the weights could not be loaded ({type(e).__name__})") from None
    if torch_dtype != torch.float32:
        vq = getattr(hf.model, "vqmodel", None)
        kept = {k: v.clone() for k, v in vq.state_dict().items()} if vq is not None else None
        hf.to(torch_dtype)
        if vq is not None:
            vq.float().load_state_dict(kept)
    resolution = resolution or processor_resolution(processor)
    cls = family_class(config.model_type)
    codec = cls.make_codec(hf, processor.image_processor, resolution)
    return cls(hf.eval(), processor, codec, str(p.resolve()), tuple(route_tokens))


def processor_resolution(processor) -> int:
    """The square image size the processor resizes to (Emu3: the side of its minimum area)."""
    ip = processor.image_processor
    size = getattr(ip, "size", None) or {}
    if "height" in size:
        return int(size["height"])
    crop = getattr(ip, "crop_size", None) or {}
    if "height" in crop:  # Chameleon: resized by its shortest edge, then center-cropped to this square
        return int(crop["height"])
    if getattr(ip, "min_pixels", None):
        return int(round(ip.min_pixels**0.5))
    raise ConfigError("the processor does not say its image size: set model.resolution")
