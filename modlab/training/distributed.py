"""What the Trainer needs to know about a model to shard it: FSDP wraps each decoder layer as
one unit (a routed layer with its routers, or a plain one), found from the model itself so every
family (modlab's own, a transformers LM) gets the same rule without registering anything."""

from __future__ import annotations

from torch import nn


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes of the members of the model's layer stack: the nn.ModuleList holding the most
    parameters (a routed layer is a wrapper around the plain one, so with routing on some layers
    both classes are listed and each routed layer is one unit with its routers)."""
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        return set()
    stack = max(stacks, key=lambda s: sum(p.numel() for p in s.parameters()))
    return {type(layer) for layer in stack}


def fsdp_strategy(model: nn.Module):
    """Lightning's FSDPStrategy, one FSDP unit per decoder layer; full (rank-0) checkpoints, so a
    checkpoint loads the same way whatever strategy wrote it."""
    # Lightning only when an FSDP strategy is built
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy=layer_classes(model), state_dict_type="full")
