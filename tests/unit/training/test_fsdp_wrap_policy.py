"""FSDP's wrap policy: one unit per decoder layer, a routed layer (with its routers) as one unit,
for modlab's own models and for transformers LMs alike (Lightning runs FSDP on CUDA only, so the
policy is what CPU tests can check; the strategy itself runs under `trainer=fsdp` on GPUs)."""

from __future__ import annotations

import pytest
from torch import nn

from modlab.models.config import ModelConfig
from modlab.models.transformer import Block, Transformer
from modlab.routing.install import install_routing
from modlab.routing.routed_block import RoutedBlock
from modlab.training.distributed import layer_classes


def test_the_wrapped_classes_are_the_layers_of_a_routed_modlab_model():
    model = Transformer(ModelConfig(d_model=32, n_layer=4, n_head=2), vocab_size=50)
    assert layer_classes(model) == {Block}
    install_routing(model.blocks, 32, {1: [0.5], 3: [0.25, 0.75]}, "ste_sigmoid")
    assert layer_classes(model) == {Block, RoutedBlock}
    routed = [m for m in model.modules() if isinstance(m, RoutedBlock)]
    # the routers live inside the routed layer, so they are sharded with it
    assert all(any("router" in n for n, _ in b.named_parameters()) for b in routed)


def test_the_wrapped_classes_are_the_decoder_layers_of_a_transformers_lm():
    pytest.importorskip("transformers")
    from modlab.models.hf_tiny import tiny_causal_lm
    from modlab.routing.hf_routed_layer import HFRoutedLayer, install_hf_routing

    model = tiny_causal_lm("llama", vocab_size=64, attn_implementation="eager")
    layer = type(model.model.layers[0])
    assert layer_classes(model) == {layer}
    install_hf_routing(model, {1: [0.5]})
    assert layer_classes(model) == {layer, HFRoutedLayer}


def test_a_model_without_a_layer_stack_wraps_nothing():
    assert layer_classes(nn.Sequential(nn.Linear(4, 4))) == set()
