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
from functools import partial

import torch
import torch.nn as nn

from modlab.analysis.hf_attention import hf_attention_capture
from modlab.errors import ConfigError
from modlab.hf_layer_map import decoder_layers
from modlab.models.hf_causal_lm import HFCausalLM
from modlab.models.token_nll import token_nll
from modlab.models.transformer import Block, attention_probs


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


def hf_sublayers(family):
    """Sublayers of a transformers decoder layer of `family` (modlab.hf_layer_map): the
    attention is called with the layer's own keyword arguments (position embeddings, mask, ...),
    as the layer itself does, and each branch applies the norms its family puts around it (Gemma
    2 / 3 normalise the branch outputs too). Phi runs attention and MLP in parallel off one norm:
    its MLP branch reads the layer input x whatever stream it is given, so x + attn(x) + mlp(.)
    is still the layer's output."""

    def sublayers(layer: nn.Module, args: tuple, kwargs: dict) -> Sublayers:
        x = args[0] if args else kwargs["hidden_states"]
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        core = getattr(layer, "block", layer)  # a routed layer: measured as if every token ran it
        attn, mlp = getattr(core, family.attention), getattr(core, family.mlp)
        attn_in, mlp_in = getattr(core, family.input_norm), getattr(core, family.mlp_norm)
        attn_out = getattr(core, family.attn_out_norm) if family.attn_out_norm else nn.Identity()
        mlp_out = getattr(core, family.mlp_out_norm) if family.mlp_out_norm else nn.Identity()
        return Sublayers(
            x,
            lambda h: attn_out(attn(hidden_states=attn_in(h), **rest)[0]),
            lambda h: mlp_out(mlp(mlp_in(x if family.parallel_attn_mlp else h))),
        )

    return sublayers


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
    # ... as the first element of a tuple (Chameleon: modlab.hf_layer_map.layer_returns_tuple)
    layer_returns_tuple: bool = False
    # a model whose layers are not modlab Blocks: attention(fn) is a context manager that, while
    # active, calls fn(layer, q, k, mask, probs, head_dim) as each layer's attention runs
    # (modlab.analysis.hf_attention); None: read modlab Blocks (layer_attention)
    attention: Callable | None = None

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
def layer_attention(subject: Subject, fn: Callable) -> Iterator[None]:
    """While active, every forward calls fn(layer, q, k, mask, probs, head_dim) for each layer:
    its queries and keys (B, H, T, head_dim) after RoPE, key heads repeated to the query heads
    (grouped-query attention), the boolean attention mask (B, 1, T, T) and probs() the attention
    probabilities (B, H, T, T) the model computes."""
    if subject.attention is not None:
        with subject.attention(fn):
            yield
        return

    def read(i, block, x, positions, mask):
        q, k, _ = block.attn.qk(block.norm_attn(x), positions)
        fn(i, q, k, mask, lambda: attention_probs(q, k, mask), block.attn.head_dim)

    with layer_inputs(subject.blocks, read):
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

    def run(batch: dict) -> torch.Tensor:
        # the hidden states, not the logits: the hooks read the layers, and a real vocabulary's
        # logits of a calibration batch would be its largest tensor by far
        return lm.hidden_states(batch["ids"], valid=batch.get("valid"))

    def task_losses(batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        nll, count = token_nll(lm.logits_of, subject.run(batch), batch["labels"], lm.vocab_size)
        return {"lm": nll / max(count, 1)}

    if isinstance(lm, HFCausalLM):
        blocks = decoder_layers(lm.hf, lm.family)
        capture = partial(hf_attention_capture, lm)
        subject = Subject(
            lm,
            blocks,
            run,
            task_losses,
            hf_sublayers(lm.family),
            returns_stream=True,
            layer_returns_tuple=lm.family.layer_returns_tuple,
            attention=capture,
        )
    else:
        subject = Subject(lm, lm.transformer.blocks, run, task_losses)
    return subject
