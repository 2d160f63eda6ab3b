"""What an analysis needs from a model, and hooks that read each layer's input.

A `Subject` is a model built on modlab's Transformer (its `blocks`, dense `Block`s or routed
wrappers around them) plus how to run a calibration batch through it and what its per-task
losses are. Analyses read every layer's input (hidden states, positions, attention mask) with a
forward pre-hook on the layer, so no model code changes and routed layers are seen with their
full input sequence. Show-o-like models get theirs from `showo_subject`; an Emu3-like or LM model
needs only its own forward and losses.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from modlab.errors import ConfigError
from modlab.models.transformer import Block


@dataclass
class Subject:
    model: nn.Module
    blocks: nn.ModuleList  # the transformer's layers, in order
    run: Callable[[dict], torch.Tensor]  # forward one calibration batch (returns logits)
    # per-task mean losses of a batch; the generator fixes any randomness (e.g. T2I masking)
    task_losses: Callable[[dict, torch.Generator], dict[str, torch.Tensor]]

    @property
    def n_layer(self) -> int:
        return len(self.blocks)


def core_block(layer: nn.Module) -> Block:
    """The pre-norm Block a layer computes with (a routed layer wraps one as `.block`)."""
    block = getattr(layer, "block", layer)
    if not isinstance(block, Block):
        raise ConfigError(f"cannot analyse a layer of type {type(block).__name__}: the analyses need modlab's Block")
    return block


@contextmanager
def layer_inputs(blocks: nn.ModuleList, fn: Callable[[int, Block, torch.Tensor, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """While active, every forward calls fn(layer, block, x, positions, attn_mask) with each layer's
    input (the full sequence, also for routed layers) before the layer runs."""

    def hook(i: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0]
        positions = args[1] if len(args) > 1 else kwargs["positions"]
        mask = args[2] if len(args) > 2 else kwargs["attn_mask"]
        fn(i, core_block(module), x, positions, mask)

    handles = [layer.register_forward_pre_hook(_bind(hook, i), with_kwargs=True) for i, layer in enumerate(blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _bind(hook, i: int):
    return lambda module, args, kwargs: hook(i, module, args, kwargs)


def showo_subject(model) -> Subject:
    """A Show-o-like model (modlab.models.showo.ShowO), dense or routed."""

    def run(batch: dict) -> torch.Tensor:
        return model(batch["ids"], batch["is_image"], batch["valid"], batch["task"])

    def task_losses(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return model.task_losses(model.training_batch(batch, 0.0, generator=generator))

    return Subject(model, model.transformer.blocks, run, task_losses)
