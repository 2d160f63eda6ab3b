"""Analytic training FLOPs agree with torch's FlopCounterMode within 5 %, dense and routed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modlab.data.rows import collate_rows, concat_batches, lm_row, mmu_row, t2i_row
from modlab.data.tokens import TokenSpace
from modlab.flops import traced_train_step_flops, train_step_flops
from modlab.models.config import ModelConfig
from modlab.models.showo import ShowO
from modlab.routing.config import RoutingConfig
from modlab.routing.install import apply_routing
from modlab.routing.trace import record_routing

SP = TokenSpace(17)
CFG = ModelConfig(d_model=64, n_layer=4, n_head=4)


def mixed_batch():
    g = torch.Generator().manual_seed(0)
    rows = [t2i_row(SP, "a 3", torch.randint(0, 17, (64,), generator=g), 64, 3) for _ in range(4)]
    rows += [mmu_row(SP, torch.randint(0, 17, (64,), generator=g), "what?", "a 3.", 3) for _ in range(4)]
    return concat_batches([collate_rows(rows, SP.pad), collate_rows([lm_row(b"x" * 80)] * 2, SP.pad)], SP.pad)


@pytest.mark.parametrize(
    "routing",
    [
        RoutingConfig(kind="dense"),
        RoutingConfig(kind="mod", capacity=0.125),
        RoutingConfig(kind="mod", capacity=0.25, causal="predictor"),
        RoutingConfig(kind="unimod", placement="last_half", task_capacity={"t2i": [0.8], "mmu": [0.5, 0.2]}),
    ],
)
def test_analytic_flops_match_flop_counter(routing):
    torch.manual_seed(0)
    model = ShowO(CFG, SP, 64)
    apply_routing(model.transformer.blocks, CFG.d_model, routing)
    batch = model.mask_images(mixed_batch())
    with FlopCounterMode(display=False) as counter:
        with record_routing(model) as trace:
            loss = sum(model.task_losses(batch).values())
        aux, _ = trace.causal_stats()
        loss = loss if aux is None else loss + aux
        loss.backward()
    B, T = batch["ids"].shape
    analytic = traced_train_step_flops(CFG, SP.vocab_size, trace, B, T)
    measured = counter.get_total_flops()
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)
    if routing.kind != "dense":
        assert analytic < train_step_flops(CFG, SP.vocab_size, B, T)
