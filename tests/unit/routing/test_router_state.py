"""The routers' state as metrics (modlab.routing.trace.RouterState) and the router options of
docs/routing.md "The router's gradient": what the causal decision really runs against top-k
(recall, kept share: the agreement alone reads 0.875 at capacity 0.125 when nothing runs), the
logit scale and the router weight's gradient d w / d s over routed tokens only, and the options
(`weight=ste_logit|logit`, `temperature`, `router_input=norm`, `aux_margin`) doing what they say."""

from __future__ import annotations

import pytest
import torch
from helpers import traced

from modlab.errors import ConfigError
from modlab.models.config import ModelConfig
from modlab.models.transformer import Block
from modlab.routing.config import RoutingConfig
from modlab.routing.install import RouteInfo
from modlab.routing.routed_block import RoutedBlock

CFG = ModelConfig(arch="emu3", d_model=32, n_layer=4, n_head=2)
B, T, D = 4, 16, CFG.d_model


def inputs(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g) * scale
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 12:] = False
    positions = torch.arange(T).expand(B, T)
    mask = torch.ones(B, 1, T, T, dtype=torch.bool).tril()
    return x, positions, mask, valid


def block(capacity=(0.125,), **options) -> RoutedBlock:
    torch.manual_seed(0)
    return RoutedBlock(Block(CFG), D, list(capacity), causal=options.pop("causal", "aux_bce"), **options)


def test_recall_and_kept_share_show_a_decision_that_runs_nothing():
    """Every decision logit <= 0: nothing runs while decoding, yet 7 of 8 tokens 'agree' with top-k."""
    rb = block()
    torch.nn.init.zeros_(rb.router.proj.weight)  # logit 0 everywhere: the decision (logit > 0) runs no token
    x, positions, mask, valid = inputs()
    valid[:] = True
    with torch.no_grad():
        _, r = traced(rb, x, positions, mask, RouteInfo(task=torch.zeros(B, dtype=torch.long), valid=valid))
    assert float(r.agreement) == pytest.approx(0.875)  # what val/router_agreement alone reported
    from modlab.routing.trace import RouterState

    state = RouterState()
    state.add(r)
    m = state.metrics()
    assert float(m["router_recall"]) == 0.0 and float(m["router_decision_kept"]) == 0.0
    assert float(m["router_topk_kept"]) == pytest.approx(0.125)


def test_logit_scale_and_weight_gradient_over_routed_tokens_only():
    """Rows of task 0 are dense here (capacity 1) and padding is never routed: neither counts."""
    rb = block(capacity=(1.0, 0.25))
    torch.nn.init.normal_(rb.router.proj.weight, std=1.0)
    x, positions, mask, valid = inputs()
    task = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        _, r = traced(rb, x, positions, mask, RouteInfo(task=task, valid=valid))
        s = rb.router(x, task)
    routed = valid & (task == 1)[:, None]
    s = s[routed]
    sig = torch.sigmoid(s)
    grad = sig * (1 - sig)
    from modlab.routing.trace import RouterState

    state = RouterState()
    state.add(r)
    m = state.metrics()
    torch.testing.assert_close(m["router_logit_abs_median"], s.abs().median())
    torch.testing.assert_close(m["router_weight_grad_median"], grad.median())
    torch.testing.assert_close(m["router_weight_grad_small"], (grad < 0.01).float().mean())
    both = ((s > 0) & r.selected[routed]).sum()
    torch.testing.assert_close(m["router_recall"], both.float() / r.selected[routed].sum())


def test_ste_logit_is_the_dense_block_forward_and_has_no_sigmoid_factor_backward():
    x, positions, mask, valid = inputs()
    sig, lin = block(weight="ste_sigmoid"), block(weight="ste_logit")
    lin.load_state_dict(sig.state_dict())
    route = RouteInfo(task=torch.zeros(B, dtype=torch.long), valid=valid)
    torch.testing.assert_close(lin(x, positions, mask, route), sig(x, positions, mask, route), rtol=0, atol=0)
    # dL/ds = sigmoid'(s) <dL/dy, f> vs <dL/dy, f>: per token the ratio is sigmoid'(s)
    scores = {}
    for name, rb in (("sig", sig), ("lin", lin)):
        s = rb.router(x, route.task)
        s.retain_grad()
        rb.router.forward = lambda h, t, s=s: s  # the same logits, their gradient read off
        rb(x, positions, mask, route).pow(2).sum().backward()
        scores[name] = s
    kept = scores["lin"].grad != 0
    sg = torch.sigmoid(scores["sig"].detach())
    torch.testing.assert_close(scores["sig"].grad[kept], (sg * (1 - sg))[kept] * scores["lin"].grad[kept])


def test_temperature_scales_the_sigmoid_and_its_gradient():
    rb = block(weight="sigmoid", temperature=4.0)
    s = torch.tensor([-8.0, 0.0, 8.0], requires_grad=True)
    w = rb.router_weight(s)
    torch.testing.assert_close(w, torch.sigmoid(s.detach() / 4))
    w.sum().backward()
    g = torch.sigmoid(s.detach() / 4)
    torch.testing.assert_close(s.grad, g * (1 - g) / 4)
    torch.testing.assert_close(rb.weight_gradient(s.detach()), g * (1 - g) / 4)


def test_normalised_router_input_ignores_the_streams_scale():
    x, positions, mask, valid = inputs()
    task = torch.zeros(B, dtype=torch.long)
    raw, norm = block(), block(router_input="norm")
    with torch.no_grad():
        torch.testing.assert_close(norm.router(10 * x, task), norm.router(x, task), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(raw.router(10 * x, task), 10 * raw.router(x, task), rtol=1e-5, atol=1e-5)


def test_aux_margin_leaves_out_tokens_already_right_by_more_than_it():
    x, positions, mask, valid = inputs()
    route = RouteInfo(task=torch.zeros(B, dtype=torch.long), valid=valid)
    plain, margin = block(), block(aux_margin=2.0)
    torch.nn.init.normal_(plain.router.proj.weight, std=2.0)
    margin.load_state_dict(plain.state_dict())
    _, rp = traced(plain, x, positions, mask, route)
    _, rm = traced(margin, x, positions, mask, route)
    s = plain.router(x, route.task).detach()[valid]
    target = rp.selected[valid].float()
    right = (s > 0) == target.bool()
    keep = ~(right & (s.abs() > 2.0))
    assert 0 < int(keep.sum()) < len(keep)  # some tokens are left out, some are not
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, target, reduction="none")
    torch.testing.assert_close(rp.aux_loss, bce.mean())
    torch.testing.assert_close(rm.aux_loss, (bce * keep).sum() / len(keep))
    torch.testing.assert_close(rm.agreement, rp.agreement)  # the agreement still counts every token


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"temperature": 0.0}, "routing.temperature must be > 0"),
        ({"router_input": "layernorm"}, "routing.router_input 'layernorm' is unknown"),
        ({"aux_margin": -1.0}, "routing.aux_margin must be >= 0"),
        ({"weight": "tanh"}, "routing.weight 'tanh' is unknown"),
    ],
)
def test_router_options_are_range_checked(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        RoutingConfig(kind="mod", **bad)
