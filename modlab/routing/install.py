"""Which layers are routed, and each task's capacity there; installing that into a transformer."""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch.nn as nn

from modlab.errors import ConfigError
from modlab.routing.routed_block import RoutedBlock
from modlab.routing.routed_block import RouteInfo as RouteInfo  # re-exported: where callers import it


def install_routing(
    blocks: nn.ModuleList,
    d_model: int,
    layer_capacity: dict[int, list[float]],
    weight: str,
    causal: str = "none",
    **options,
) -> None:
    """Wrap blocks[i] for every routed layer i; `layer_capacity[i]` has one capacity per router;
    `options`: RoutedBlock's temperature, router_input, aux_margin."""
    for i, caps in sorted(layer_capacity.items()):
        if not 0 <= i < len(blocks):
            raise ConfigError(f"routed layer {i} is out of range (the model has layers 0..{len(blocks) - 1})")
        if not all(0.0 < c <= 1.0 for c in caps):
            raise ConfigError(f"capacities must be in (0, 1], got {caps} for layer {i}")
        blocks[i] = RoutedBlock(blocks[i], d_model, list(caps), weight, causal, **options)
        blocks[i].layer_index = i


def set_anneal_fraction(model: nn.Module, fraction: float) -> None:
    """Set the training-time capacity-anneal fraction of every routed block (modlab.routing.schedule)."""
    for b in routed_blocks(model):
        b.anneal = fraction


def apply_routing(blocks: nn.ModuleList, d_model: int, cfg) -> None:
    """Install the routing a RoutingConfig describes (no-op for dense)."""
    install_routing(blocks, d_model, cfg.layer_capacities(len(blocks)), **cfg.block_options())


def routed_blocks(model: nn.Module) -> list[RoutedBlock]:
    return [m for m in model.modules() if isinstance(m, RoutedBlock)]


@contextmanager
def threshold_routing(model: nn.Module):
    """Route by the causal decision (logit > 0) instead of top-k inside the block, e.g. while
    decoding token by token. Blocks without a causal decision (causal="none") keep top-k."""
    blocks = [b for b in routed_blocks(model) if b.causal != "none"]
    for b in blocks:
        b.mode = "threshold"
    try:
        yield
    finally:
        for b in blocks:
            b.mode = "topk"


def has_causal_routing(model: nn.Module) -> bool:
    """Whether threshold_routing changes anything: some routed layer has a causal decision."""
    return any(b.causal != "none" for b in routed_blocks(model))


def routes_causally(model: nn.Module) -> bool:
    """Whether every routed layer can route causally (a dense model trivially can)."""
    return all(b.causal != "none" for b in routed_blocks(model))


def dense_key(key: str) -> str:
    """A routed layer's wrapped block is `blocks.i.block.*`; the dense name is `blocks.i.*`."""
    return re.sub(r"(blocks\.\d+)\.block\.", r"\1.", key)
