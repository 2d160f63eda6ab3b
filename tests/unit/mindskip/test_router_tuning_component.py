"""RouterTuning, the one Router-Tuning component the LM and unified modules hold: it freezes the
base, gates it, penalises the capacity, keeps the routers alone in checkpoints and checks them."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from modlab.errors import CheckpointError
from modlab.mindskip.config import MindSkipConfig
from modlab.mindskip.router_tuning import ROUTER_PREFIX, RouterTuning
from modlab.models.causal_lm import CausalLM
from modlab.models.config import ModelConfig

CFG = ModelConfig(arch="lm", d_model=32, n_layer=4, n_head=2)


class Host(nn.Module):
    def __init__(self, **mindskip):
        super().__init__()
        torch.manual_seed(0)
        self.lm = CausalLM(CFG)
        self.router_tuning = RouterTuning(MindSkipConfig(enabled=True, layers=[1, 2], **mindskip), self.lm)
        self.router_tuning.attach(self)


def test_the_base_is_frozen_and_the_routers_alone_train_under_the_host_keys():
    host = Host()
    trainable = {id(p) for p in host.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in host.skip.routers.parameters()} and len(trainable) == 2
    assert {f"{ROUTER_PREFIX}1.proj.weight", f"{ROUTER_PREFIX}2.proj.weight"} <= set(host.state_dict())
    assert host.skip is host.router_tuning.skip and host.strict_loading is False


@pytest.mark.parametrize("penalty", ["relu", "abs"])
def test_the_penalty(penalty):
    rt = Host(lam=0.3, target_capacity=0.5, penalty=penalty).router_tuning
    assert float(rt.penalty(torch.tensor(0.8))) == pytest.approx(0.3 * 0.3)
    assert float(rt.penalty(torch.tensor(0.2))) == pytest.approx(0.0 if penalty == "relu" else 0.3 * 0.3)


def test_checkpoints_hold_the_routers_alone_and_are_checked_on_load():
    host = Host()
    checkpoint = {"state_dict": host.state_dict()}
    host.router_tuning.save(checkpoint)
    assert set(checkpoint["state_dict"]) == {f"{ROUTER_PREFIX}1.proj.weight", f"{ROUTER_PREFIX}2.proj.weight"}
    host.router_tuning.check(checkpoint, host.state_dict())
    checkpoint["state_dict"].pop(f"{ROUTER_PREFIX}2.proj.weight")
    with pytest.raises(CheckpointError, match="routers do not match"):
        host.router_tuning.check(checkpoint, host.state_dict())


def test_the_test_capacity_is_weighted_by_rows_or_tokens():
    host = Host()
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[0, 5:] = False
    ids = torch.randint(0, 256, (3, 10))
    with host.skip.context(valid=valid):
        host.lm(ids, valid=valid)
    capacity, weight = host.router_tuning.capacity_sample(valid)
    assert float(capacity.detach()) == 1.0 and weight == 3.0  # zero init: every gate open; one gate per row
    token = Host(granularity="token")
    with token.skip.context(valid=valid):
        token.lm(ids, valid=valid)
    assert token.router_tuning.capacity_sample(valid)[1] == 25.0  # the valid tokens
    assert float(host.router_tuning.skipped_attention(torch.tensor(0.75))) == 0.5  # 2 routed layers
