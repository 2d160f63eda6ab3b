"""What an analysis needs from a model, and hooks that read each layer's input.

A `Subject` is a model's stack of layers plus how to run a calibration batch through it and what
its per-task losses are. Analyses read every layer's input with a forward pre-hook on the layer,
so no model code changes and routed layers are seen with their full input sequence.

- `layer_inputs` hands over modlab's own `Block` (dense, or wrapped by a routed layer) with the
  layer's hidden states, positions and attention mask: the attention-level analyses (attention
  fractions, ARank) compute queries and keys from it, so they need modlab's blocks.
- `layer_sublayers` hands over only the layer's two residual branches as functions of the stream
  (`Sublayers`): enough for LLM-Drop importance, and written for modlab's blocks
  (`block_sublayers`) and for transformers' Llama-family decoder layers (`hf_sublayers`).

Show-o-like and Emu3-like models get their Subject from `showo_subject`, causal LMs (modlab's
CausalLM or a Hugging Face one) from `lm_subject`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.data.tokens import IGNORE_INDEX
from modlab.errors import ConfigError
from modlab.models.transformer import Block


@dataclass
class Sublayers:
    """One layer's input x and its residual branches as functions of a stream h, with the layer's
    own positions and mask: attn(h) = Attn(LN(h)), mlp(h) = MLP(LN(h)). The layer computes
    h = x + attn(x), then h + mlp(h)."""

    x: torch.Tensor
    attn: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]


def core_block(layer: nn.Module) -> Block:
    """The pre-norm Block a layer computes with (a routed layer wraps one as `.block`)."""
    block = getattr(layer, "block", layer)
    if not isinstance(block, Block):
        raise ConfigError(f"cannot analyse a layer of type {type(block).__name__}: the analyses need modlab's Block")
    return block


def _block_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, positions, attn_mask) of a call to a modlab block (or a routed wrapper around one)."""
    x = args[0]
    positions = args[1] if len(args) > 1 else kwargs["positions"]
    mask = args[2] if len(args) > 2 else kwargs["attn_mask"]
    return x, positions, mask


def block_sublayers(layer: nn.Module, args: tuple, kwargs: dict) -> Sublayers:
    """modlab's pre-norm Block (dense or routed: measured as if every token ran it)."""
    x, positions, mask = _block_args(args, kwargs)
    block = core_block(layer)
    return Sublayers(
        x, lambda h: block.attn(block.norm_attn(h), positions, mask), lambda h: block.mlp(block.norm_mlp(h))
    )


def hf_sublayers(layer: nn.Module, args: tuple, kwargs: dict) -> Sublayers:
    """transformers' Llama / Mistral / Qwen2 decoder layer: the attention is called with the
    layer's own keyword arguments (position embeddings, mask, ...), as the layer itself does."""
    x = args[0] if args else kwargs["hidden_states"]
    rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    return Sublayers(
        x,
        lambda h: layer.self_attn(hidden_states=layer.input_layernorm(h), **rest)[0],
        lambda h: layer.mlp(layer.post_attention_layernorm(h)),
    )


@dataclass
class Subject:
    model: nn.Module
    blocks: nn.ModuleList  # the transformer's layers, in order
    run: Callable[[dict], torch.Tensor]  # forward one calibration batch (returns logits)
    # per-task mean losses of a batch; the generator fixes any randomness (e.g. T2I masking)
    task_losses: Callable[[dict, torch.Generator], dict[str, torch.Tensor]]
    # a layer's residual branches from its call (layer, args, kwargs)
    sublayers: Callable[[nn.Module, tuple, dict], Sublayers] = block_sublayers
    # layers return the new stream x + f(x) (transformers), not modlab's delta f(x)
    returns_stream: bool = False

    @property
    def n_layer(self) -> int:
        return len(self.blocks)


@contextmanager
def _pre_hooks(blocks: nn.ModuleList, hook: Callable[[int, nn.Module, tuple, dict], None]) -> Iterator[None]:
    """hook(i, layer, args, kwargs) before every call of layer i, while active."""
    handles = [layer.register_forward_pre_hook(_bind(hook, i), with_kwargs=True) for i, layer in enumerate(blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _bind(hook, i: int):
    return lambda module, args, kwargs: hook(i, module, args, kwargs)


@contextmanager
def layer_inputs(
    blocks: nn.ModuleList, fn: Callable[[int, Block, torch.Tensor, torch.Tensor, torch.Tensor], None]
) -> Iterator[None]:
    """While active, every forward calls fn(layer, block, x, positions, attn_mask) with each layer's
    input (the full sequence, also for routed layers) before the layer runs. modlab blocks only."""
    with _pre_hooks(blocks, lambda i, layer, args, kwargs: fn(i, core_block(layer), *_block_args(args, kwargs))):
        yield


@contextmanager
def layer_sublayers(subject: Subject, fn: Callable[[int, Sublayers], None]) -> Iterator[None]:
    """While active, every forward calls fn(layer, sublayers) before each layer runs."""
    with _pre_hooks(subject.blocks, lambda i, layer, args, kwargs: fn(i, subject.sublayers(layer, args, kwargs))):
        yield


def showo_subject(model) -> Subject:
    """A Show-o-like model (modlab.models.showo.ShowO), dense or routed; Emu3-like models share
    its interface."""

    def run(batch: dict) -> torch.Tensor:
        return model(batch["ids"], batch["is_image"], batch["valid"], batch["task"])

    def task_losses(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return model.task_losses(model.training_batch(batch, 0.0, generator=generator))

    return Subject(model, model.transformer.blocks, run, task_losses)


def lm_subject(lm) -> Subject:
    """A causal LM: modlab's CausalLM (its blocks are modlab Blocks) or a Hugging Face model
    (modlab.models.hf_causal_lm.HFCausalLM). One task, `lm`: next-token loss on the labels."""
    from modlab.models.hf_causal_lm import HFCausalLM

    def run(batch: dict) -> torch.Tensor:
        return lm(batch["ids"], valid=batch.get("valid"))

    def task_losses(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        logits = run(batch)
        return {
            "lm": F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        }

    if isinstance(lm, HFCausalLM):
        return Subject(lm, lm.hf.model.layers, run, task_losses, hf_sublayers, returns_stream=True)
    return Subject(lm, lm.transformer.blocks, run, task_losses)
