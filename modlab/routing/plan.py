"""Which layers are routed, and each task's capacity there; installing that into a transformer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from modlab.errors import ConfigError
from modlab.routing.routed_block import RoutedBlock


@dataclass
class RouteInfo:
    """What a routed block needs to know about the batch besides the hidden states."""

    task: torch.Tensor  # (B,) task id of each row
    valid: torch.Tensor  # (B, T) tokens that may be selected (padding never is)


def install_routing(blocks: nn.ModuleList, d_model: int, layer_capacity: dict[int, list[float]], weight: str) -> None:
    """Wrap blocks[i] for every routed layer i; `layer_capacity[i]` has one capacity per router."""
    for i, caps in sorted(layer_capacity.items()):
        if not 0 <= i < len(blocks):
            raise ConfigError(f"routed layer {i} is out of range (the model has layers 0..{len(blocks) - 1})")
        if not all(0.0 < c <= 1.0 for c in caps):
            raise ConfigError(f"capacities must be in (0, 1], got {caps} for layer {i}")
        blocks[i] = RoutedBlock(blocks[i], d_model, list(caps), weight)


def set_anneal_fraction(model: nn.Module, fraction: float) -> None:
    """Set the training-time capacity-anneal fraction of every routed block (modlab.routing.schedule)."""
    for m in model.modules():
        if isinstance(m, RoutedBlock):
            m.anneal = fraction
