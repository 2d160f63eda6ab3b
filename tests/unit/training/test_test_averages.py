"""Test-time averages weight each batch by what it counts, so a test set split into batches of
different sizes reports what one batch of all its rows would: MindSkip's test/capacity (rows, or
tokens with token granularity), the HF LM's test/flops_ratio (the test's routed FLOPs over its
dense FLOPs) and the HF unified model's test/mindskip_capacity, per task and over all."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from helpers import save_tiny_hf, save_tiny_hf_unified

from modlab.data.config import DataConfig
from modlab.data.tokens import IGNORE_INDEX
from modlab.mindskip.config import MindSkipConfig
from modlab.models.config import ModelConfig
from modlab.routing.config import RoutingConfig
from modlab.training.config import EvalConfig, ObjectiveConfig

CFG = ModelConfig(arch="lm", d_model=32, n_layer=4, n_head=2)


def lm_batch(rows: int, T: int = 24, seed: int = 0) -> dict:
    ids = torch.randint(0, 256, (rows, T), generator=torch.Generator().manual_seed(seed))
    labels = torch.cat([ids[:, 1:], torch.full((rows, 1), IGNORE_INDEX)], 1)
    valid = torch.ones(rows, T, dtype=torch.bool)
    valid[0, T - 5 :] = False  # rows differ in length
    return {"ids": ids, "labels": labels.masked_fill(~valid, IGNORE_INDEX), "valid": valid}


def cat(*batches: dict) -> dict:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def spread_routers(skip) -> None:
    """Routers that open some rows' gates and close others'."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for r in skip.routers.values():
            r.proj.weight.copy_(torch.randn(r.proj.weight.shape, generator=g) * 3)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_mindskip_test_capacity_weights_batches_by_rows_or_tokens(granularity):
    from modlab.training.lm import LMModule

    torch.manual_seed(0)
    skip = MindSkipConfig(enabled=True, n_routed=2, granularity=granularity)
    m = LMModule.from_configs(CFG, DataConfig(name="text"), ObjectiveConfig(name="lm"), EvalConfig(), skip).eval()
    m.log = lambda *a, **k: None
    spread_routers(m.skip)
    small, large = lm_batch(1, seed=1), lm_batch(5, seed=2)
    with torch.no_grad():
        m.test_step(small, 0)
        m.test_step(large, 1)
        capacities = []
        for b in (small, large):
            m.forward_logits(b)
            capacities.append(float(m.skip.capacity()))
        assert abs(capacities[0] - capacities[1]) > 0.05  # the batches' capacities differ: their weights matter
        m.forward_logits(cat(small, large))
        whole = float(m.skip.capacity())
    assert float(m.test_capacity.compute()) == pytest.approx(whole, abs=1e-6)


def test_hf_lm_test_flops_ratio_is_the_tests_routed_over_dense_flops(tmp_path):
    from modlab.routing.hf_flops import forward_flops
    from modlab.routing.install import threshold_routing
    from modlab.routing.trace import record_routing
    from modlab.training.hf_lm import HFLMModule

    path = save_tiny_hf(tmp_path / "llama")
    m = HFLMModule(
        asdict(ModelConfig(arch="hf", path=str(path))),
        asdict(DataConfig(name="text")),
        asdict(ObjectiveConfig(name="lm")),
        asdict(EvalConfig()),
        routing=asdict(RoutingConfig(kind="mod", capacity=0.5)),
    ).eval()
    for layer in m.routing.layers.values():  # decision logits spread around 0
        torch.nn.init.normal_(layer.router.proj.weight, std=2.0)
    m.log = lambda *a, **k: None
    batches = [lm_batch(1, T=8, seed=1), lm_batch(4, T=40, seed=2)]
    routed = dense = 0
    with torch.no_grad():
        for i, b in enumerate(batches):
            m.test_step(b, i)
            with threshold_routing(m.lm), record_routing(m.lm) as trace:
                m.forward_logits(b)
            B, T = b["ids"].shape
            routed += forward_flops(m.lm.hf, B, T, trace.flops_groups()[0])
            dense += forward_flops(m.lm.hf, B, T)
    assert float(m.test_flops_ratio.compute()) == pytest.approx(routed / dense, rel=1e-5)


def test_hf_unified_mindskip_capacity_per_task_weighted_by_rows(tmp_path):
    from modlab.data.rows import collate_rows
    from modlab.training.hf_unified_module import HFUnifiedModule
    from modlab.training.unified import LM_TEST

    path = save_tiny_hf_unified(tmp_path / "emu3")
    m = HFUnifiedModule(
        asdict(ModelConfig(arch="hf_emu3", path=str(path))),
        asdict(DataConfig()),
        asdict(ObjectiveConfig()),
        asdict(EvalConfig()),
        mindskip=asdict(MindSkipConfig(enabled=True, n_routed=2)),
    ).eval()
    m.log = lambda *a, **k: None
    spread_routers(m.skip)
    texts = ["a line of text", "more text to read here", "short", "the last row, a longer one of text"]
    small = collate_rows([m.model.lm_row(texts[0])], m.model.pad)
    large = collate_rows([m.model.lm_row(t) for t in texts[1:]], m.model.pad)
    whole = collate_rows([m.model.lm_row(t) for t in texts], m.model.pad)
    with torch.no_grad():
        capacities = []
        for i, b in enumerate((small, large)):
            m.test_step(b, i, LM_TEST)
            capacities.append(float(m.skip.capacity()))
        assert abs(capacities[0] - capacities[1]) > 0.05  # the batches' capacities differ: their weights matter
        m.model(whole["ids"], whole["is_image"], whole["valid"], whole["task"], whole["kind"])
        expected = float(m.skip.capacity())
    assert float(m.test_skip_capacity["lm"].compute()) == pytest.approx(expected, abs=1e-6)
    assert float(m.test_skip_capacity_all.compute()) == pytest.approx(expected, abs=1e-6)  # one task here
    assert m.test_skip_capacity["mmu"].update_count == 0
