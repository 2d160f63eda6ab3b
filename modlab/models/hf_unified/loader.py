"""Loading a Hugging Face unified model (modlab.models.hf_unified) from a local `save_pretrained`
directory, by the registered family (modlab.registry: its UnifiedSpec) that loads the model_type
of the directory's config: its processor, its weights (in the dtype asked, the VQ model kept in
fp32), its model class and VQ codec, with one-line errors for every way the directory can be
wrong. A family with a directory layout of its own names its own loader (Show-o on Phi:
modlab.models.hf_unified.hf_showo.load_hf_showo).
"""

from __future__ import annotations

from pathlib import Path

import torch

from modlab.data.vq_codec import vq_model
from modlab.errors import CheckpointError, ConfigError
from modlab.models.hf_causal_lm import TORCH_DTYPES, resolve_dtype
from modlab.models.hf_unified.base import HFUnifiedModel
from modlab.registry import get_family, unified_family, unified_model_types

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def load_hf_unified(
    path: str, resolution: int = 0, route_tokens=("image",), dtype: str = "float32", arch: str | None = None
) -> HFUnifiedModel:
    """A unified model (in eval mode) from a local directory, read by the registered family `arch`
    (None: the family that loads the directory's model_type); every way the directory can be wrong
    is a one-line ConfigError / CheckpointError. `resolution` 0: the processor's own image size."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model.path '{path}' is not a Hugging Face model directory (no config.json)")
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(p)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"model.path '{path}': config.json is not a transformers config ({type(e).__name__})"
        ) from None
    family = get_family(arch) if arch else unified_family(config.model_type)
    if family is None or family.unified is None:
        raise ConfigError(
            f"model.path '{path}' holds a '{config.model_type}' model, not a unified model this family loads "
            f"({', '.join(unified_model_types())})"
        )
    if config.model_type not in family.unified.model_types:
        raise ConfigError(
            f"model.path '{path}' holds a '{config.model_type}' model, but model.arch={family.name} loads "
            f"{', '.join(family.unified.model_types)} models"
        )
    return family.unified.part("loader")(family, p, config, resolution, tuple(route_tokens), dtype)


def load_processor_directory(family, p: Path, config, resolution: int, route_tokens, dtype: str) -> HFUnifiedModel:
    """A `save_pretrained` directory with its processor (Emu3, Chameleon, Janus): the model class
    and codec of `family` (its UnifiedSpec)."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    path = str(p)
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
    codec = family.unified.part("codec")(vq_model(hf), processor.image_processor, resolution)
    return family.unified.part("model")(hf.eval(), processor, codec, str(p.resolve()), tuple(route_tokens))


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
