"""Which layers are routed, and each task's capacity there; installing that into a transformer."""

from __future__ import annotations

from contextlib import contextmanager
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


def install_routing(
    blocks: nn.ModuleList, d_model: int, layer_capacity: dict[int, list[float]], weight: str, causal: str = "none"
) -> None:
    """Wrap blocks[i] for every routed layer i; `layer_capacity[i]` has one capacity per router."""
    for i, caps in sorted(layer_capacity.items()):
        if not 0 <= i < len(blocks):
            raise ConfigError(f"routed layer {i} is out of range (the model has layers 0..{len(blocks) - 1})")
        if not all(0.0 < c <= 1.0 for c in caps):
            raise ConfigError(f"capacities must be in (0, 1], got {caps} for layer {i}")
        blocks[i] = RoutedBlock(blocks[i], d_model, list(caps), weight, causal)


def set_anneal_fraction(model: nn.Module, fraction: float) -> None:
    """Set the training-time capacity-anneal fraction of every routed block (modlab.routing.schedule)."""
    for b in routed_blocks(model):
        b.anneal = fraction


def apply_routing(blocks: nn.ModuleList, d_model: int, cfg) -> None:
    """Install the routing a RoutingConfig describes (no-op for dense)."""
    install_routing(blocks, d_model, cfg.layer_capacities(len(blocks)), cfg.weight, cfg.causal)


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


def causal_routing_stats(model: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Mean over routed layers of the last forward's causal-decision BCE and its agreement with
    top-k over routed tokens (rows of a task dense in a layer are not counted there); (None,
    None) if no layer learns a causal decision; (a zero that keeps the graph, None) if no layer
    saw a routed token (e.g. a batch of a task that is dense everywhere)."""
    blocks = [b for b in routed_blocks(model) if b.last_aux_loss is not None]
    if not blocks:
        return None, None
    # a layer where this forward had no routed token has a zero loss (kept in the graph) that
    # must not dilute the mean over the layers that did route
    routed = [b for b in blocks if b.last_agreement is not None]
    zero = sum(b.last_aux_loss for b in blocks if b.last_agreement is None)
    if not routed:
        return zero, None
    aux = torch.stack([b.last_aux_loss for b in routed]).mean() + zero
    return aux, torch.stack([b.last_agreement for b in routed]).mean()


def has_causal_routing(model: nn.Module) -> bool:
    """Whether threshold_routing changes anything: some routed layer has a causal decision."""
    return any(b.causal != "none" for b in routed_blocks(model))


def routes_causally(model: nn.Module) -> bool:
    """Whether every routed layer can route causally (a dense model trivially can)."""
    return all(b.causal != "none" for b in routed_blocks(model))


def reset_threshold_counts(model: nn.Module) -> None:
    """Forget what threshold routing kept so far (see RoutedBlock.threshold_counts)."""
    for b in routed_blocks(model):
        b.threshold_counts = None


def threshold_kept(blocks: nn.ModuleList) -> list[dict]:
    """What threshold routing kept since the last reset: one dict per (routed layer, task id)
    seen, {layer, task, kept (tokens that ran / valid tokens), capacity (the target), tokens}.
    Token-weighted over every threshold-mode forward (decoding re-runs the prefix each step, so a
    prompt token counts once per step; its decision is causal, so it is the same each time)."""
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, RoutedBlock) or b.threshold_counts is None:
            continue
        counts = b.threshold_counts.cpu()
        for t in range(len(counts)):
            ran, total = float(counts[t, 0]), float(counts[t, 1])
            if total > 0:
                cap = float(b.capacity[min(t, len(b.capacity) - 1)])
                out.append({"layer": i, "task": t, "kept": ran / total, "capacity": cap, "tokens": total})
    return out
