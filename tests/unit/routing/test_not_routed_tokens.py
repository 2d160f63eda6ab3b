"""Tokens that are not routed (model.route_tokens: e.g. only image tokens are) run every routed
layer with weight exactly 1 and teach the router nothing: with no routed token in the batch the
routers get no gradient, and the layer's output is the unrouted layer's."""

from __future__ import annotations

import pytest
import torch
from helpers import save_tiny_hf_unified

from modlab.data.rows import collate_rows
from modlab.models.hf_unified.loader import load_hf_unified
from modlab.routing.hf_routed_layer import install_hf_routing

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory):
    return save_tiny_hf_unified(tmp_path_factory.mktemp("emu3") / "emu3")


@pytest.mark.parametrize("weight", ["ste_sigmoid", "sigmoid"])
def test_rows_without_routed_tokens_run_dense_and_give_the_routers_no_gradient(emu3_dir, weight):
    model = load_hf_unified(str(emu3_dir))
    model.train()
    batch = collate_rows([model.lm_row("some text to model, " * 3), model.lm_row("more text")], model.pad)
    dense = model.task_losses(batch)["lm"]
    model.routing = install_hf_routing(model.hf, {i: [0.5, 0.5, 0.5] for i in (1, 2, 3)}, weight=weight)
    routed = model.task_losses(batch)["lm"]
    torch.testing.assert_close(routed, dense)  # every token ran every layer, weight 1
    routed.backward()
    for layer in model.routing.layers.values():
        grad = layer.router.proj.weight.grad
        assert grad is None or float(grad.abs().max()) == 0.0
