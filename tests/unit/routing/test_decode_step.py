"""The decode step of routed layers: one decision for the batch, the layer run on the rows whose
token runs it and on those only (the others write no KV entry), each row attending to its own
entries. That cached decoding equals recomputation is what test_emu3_kv_cache and
test_hf_routed_layer check; here, what each decode step really computes."""

from __future__ import annotations

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from modlab.models.causal_lm import CausalLM
from modlab.models.config import ModelConfig
from modlab.models.kv_cache import KVCache, LayerKV
from modlab.models.omni_attention import causal_mask
from modlab.models.transformer import Transformer
from modlab.routing.hf_decode import greedy_decode
from modlab.routing.hf_routed_layer import install_hf_routing
from modlab.routing.install import RouteInfo, install_routing, routed_blocks, threshold_routing
from modlab.routing.trace import record_routing

CFG = ModelConfig(d_model=32, n_layer=3, n_head=2)


def rows_seen_by(block: torch.nn.Module) -> tuple[list[int], object]:
    """The batch size of every call of `block` (a forward pre-hook), and the hook's handle."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        seen.append(int(x.shape[0]))

    return seen, block.register_forward_pre_hook(hook, with_kwargs=True)


def test_a_native_routed_decode_step_runs_only_the_rows_whose_token_runs_it():
    torch.manual_seed(0)
    model = Transformer(CFG, 50).eval()
    install_routing(model.blocks, CFG.d_model, {1: [0.5]}, "ste_sigmoid", "aux_bce")
    (routed,) = routed_blocks(model)
    torch.nn.init.normal_(routed.router.proj.weight, std=1.0)  # decisions of both signs
    B, T = 6, 5
    ids = torch.randint(0, 50, (B, T + 4))
    cache = KVCache(CFG.n_layer)
    task = torch.zeros(B, dtype=torch.long)
    seen, handle = rows_seen_by(routed.block)
    counts = []
    with torch.no_grad(), threshold_routing(model), record_routing(model) as trace:
        valid = torch.ones(B, T, dtype=torch.bool)
        model(ids[:, :T], causal_mask(valid), None, None, RouteInfo(task, valid), cache)
        for s in range(T, T + 4):
            one = torch.ones(B, 1, dtype=torch.bool)
            model(ids[:, s : s + 1], causal_mask(one), torch.full((B, 1), s), None, RouteInfo(task, one), cache)
            counts.append(int(trace.layer(1)[-1].selected.sum()))
    handle.remove()
    decode_calls = seen[1:]  # after the prefill: one call per step in which some row ran
    assert decode_calls == [n for n in counts if n > 0]
    assert any(0 < n < B for n in counts)  # some step ran part of the batch, and only that part
    # the rows that skipped wrote nothing: each row's entries are the tokens that ran it
    ran = sum(r.selected.sum(1) for r in trace.layer(1))
    assert torch.equal(cache.layers[1].length, ran)
    assert torch.equal(cache.layers[0].length, torch.full((B,), T + 4))


def test_a_decode_step_of_the_native_cache_attends_as_extend_does():
    """LayerKV.step (written at each row's length, masked by length) gives the keys and the mask
    of LayerKV.extend for a one-token call."""
    torch.manual_seed(0)
    a, b = LayerKV(), LayerKV()
    k = torch.randn(3, 2, 4, 8)
    keep = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    causal = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    a.extend(k, k, causal, keep)
    b.extend(k, k, causal, keep)
    new, keep_new = torch.randn(3, 2, 1, 8), torch.tensor([[True], [False], [True]])
    ka, _, ma = a.extend(new, new, torch.ones(1, 1, 1, 1, dtype=torch.bool), keep_new)
    kb, _, mb = b.step(new, new, keep_new)
    assert torch.equal(a.length, b.length)
    L = ka.shape[2]
    assert torch.equal(mb[..., :L], ma) and not mb[..., L:].any()  # b's span may be longer: masked
    # the keys each row sees; row 1 holds nothing and sees slot 0 only (a finite value, discarded)
    rows = [0, 2]
    assert torch.equal(kb[rows, :, :L] * mb[rows, :, 0, :L, None], ka[rows] * ma[rows, :, 0, :, None])


def test_an_hf_routed_decode_step_runs_only_the_rows_whose_token_runs_it():
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    routing = install_hf_routing(model, {2: [0.5]}, causal="aux_bce")
    with torch.no_grad():
        routing.layers[2].router.proj.weight.normal_(0, 1.0)
    from modlab.routing.hf_row_cache import RowKVLayer

    ids = torch.randint(0, 64, (5, 6))
    seen, handle = rows_seen_by(routing.layers[2].block)
    with threshold_routing(model), record_routing(model) as trace:
        _, _, cache = greedy_decode(model, ids, 6)
    handle.remove()
    counts = [int(r.selected.sum()) for r in trace.layer(2)][1:]  # the decode steps
    assert isinstance(cache.layers[2], RowKVLayer)
    assert seen[1:] == [n for n in counts if n > 0] and any(0 < n < 5 for n in counts)
    ran = sum(r.selected.sum(1) for r in trace.layer(2))
    assert torch.equal(routing.cache_entries(cache)[2], ran)


class CountCasts(TorchDispatchMode):
    """How often a tensor of a given shape is cast to bf16."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.n = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == self.shape:
            self.n += kwargs.get("dtype") == torch.bfloat16
        return func(*args, **kwargs)


def test_bf16_autocast_speed_measurement_casts_a_frozen_weight_once():
    """Router-Tuning freezes the base; autocast re-cast every frozen weight at every decode step
    (Gemma 3 270M: most of a step went to aten::copy_). The measurement now casts each once."""
    from modlab.mindskip.gate import MindSkip
    from modlab.mindskip.inference import measure_speed

    torch.manual_seed(0)
    lm = CausalLM(ModelConfig(arch="lm", d_model=32, n_layer=2, n_head=2)).eval()
    lm.requires_grad_(False)
    skip = MindSkip(lm, [])
    head = lm.transformer.head.weight
    with CountCasts(head.shape) as casts:
        measure_speed(lm, skip, [torch.randint(0, 256, (1, 8))], 6, {"base": {"routers": False}}, 1, autocast=True)
    assert casts.n == 1  # one autocast region, one cast (the decode steps of both rounds reuse it)
    assert not any(p.requires_grad for p in lm.parameters())  # the flags are restored
