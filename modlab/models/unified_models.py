"""The unified (text + image) model classes by `model.arch`."""

from __future__ import annotations

from modlab.data.tokens import TokenSpace
from modlab.models.config import ModelConfig
from modlab.models.emu3 import Emu3
from modlab.models.showo import ShowO

UNIFIED_MODELS = {"showo": ShowO, "emu3": Emu3}


def build_unified_model(cfg: ModelConfig, space: TokenSpace, n_image_tokens: int) -> ShowO:
    return UNIFIED_MODELS[cfg.arch](cfg, space, n_image_tokens)
