"""Oracles for token routing inside real transformers decoder layers, on tiny random models of every
supported family (built from their config classes; nothing is downloaded): capacity 1 is the
unmodified model, the batched wrapper equals a per-row reference loop, batch 1 and a padded batch
agree, threshold routing is causal, routers get gradient, kept counts are ceil(C * n_valid), and
sliding windows hold among the kept tokens in original positions."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import traced

from modlab.errors import ConfigError
from modlab.hf_layer_map import decoder_layers
from modlab.models.hf_tiny import tiny_causal_lm
from modlab.routing.config import RoutingConfig
from modlab.routing.hf_routed_layer import HFRoutedLayer, apply_hf_routing, install_hf_routing
from modlab.routing.install import routed_blocks, threshold_routing
from modlab.routing.trace import record_routing

transformers = pytest.importorskip("transformers")

VOCAB, T_LEN = 128, 12
COMMON = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=VOCAB,
    max_position_embeddings=256,
)
SLIDING_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
# per family: extra config values, and (window, sliding layers) as the test configures them
FAMILIES = {
    "llama": ({}, None),
    "mistral": ({"sliding_window": 6}, (6, {0, 1, 2, 3})),
    "qwen2": ({}, None),
    "qwen3": ({}, None),
    "gemma": ({}, None),
    "gemma2": ({"sliding_window": 3, "layer_types": SLIDING_TYPES}, (3, {0, 2})),
    "gemma3_text": ({"sliding_window": 3, "layer_types": SLIDING_TYPES}, (3, {0, 2})),
    "phi": ({}, None),
    "phi3": ({"bos_token_id": 1, "eos_token_id": 2}, None),
}
LENGTHS = [T_LEN, 9, 7, 4]  # right padding


def tiny_model(family: str, seed: int = 0):
    """A tiny random CausalLM of `family`, fp32, eval mode (modlab.models.hf_tiny, at these sizes)."""
    return tiny_causal_lm(family, seed, **COMMON, **FAMILIES[family][0]).eval()


def window_of(family: str, layer: int) -> int | None:
    sliding = FAMILIES[family][1]
    return sliding[0] if sliding is not None and layer in sliding[1] else None


def padded_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), T_LEN), generator=g)
    valid = torch.arange(T_LEN)[None] < torch.tensor(LENGTHS)[:, None]
    return ids, valid


def logits(model, ids, valid=None):
    with torch.no_grad():
        mask = None if valid is None else valid.long()
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def spread_routers(routing, std: float = 1.0, seed: int = 1):
    """Router logits of both signs, so that threshold routing makes a real choice."""
    g = torch.Generator().manual_seed(seed)
    for layer in routing.layers.values():
        with torch.no_grad():
            w = layer.router.proj.weight
            w.copy_(torch.randn(w.shape, generator=g) * std)


# ---- (a) capacity 1 is the unmodified model ----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_capacity_one_equals_the_unmodified_model(family):
    base = tiny_model(family)
    routed = copy.deepcopy(base)
    install_hf_routing(routed, {i: [1.0] for i in range(4)})
    ids, valid = padded_batch()
    # no padding: every layer gets exactly the model's own inputs, bit for bit
    assert torch.equal(logits(routed, ids), logits(base, ids))
    # padding: the kept tokens are the valid ones, the mask is sliced
    torch.testing.assert_close(logits(routed, ids, valid)[valid], logits(base, ids, valid)[valid])


# ---- (b) the batched wrapper equals a per-row reference loop -----------------------------------


def captured_layer_inputs(model, layer_idx: int, ids, valid):
    """What the unmodified model hands decoder layer `layer_idx`: (hidden_states, kwargs)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["x"], seen["kwargs"] = (args[0] if args else kwargs.pop("hidden_states")), dict(kwargs)

    handle = decoder_layers(model)[layer_idx].register_forward_pre_hook(grab, with_kwargs=True)
    logits(model, ids, valid)
    handle.remove()
    kwargs = seen["kwargs"]
    kwargs.pop("hidden_states", None)
    return seen["x"], kwargs


def reference_mask(sel: list[int], window: int | None, attn_implementation: str, dtype) -> torch.Tensor | None:
    """Causal (and windowed) attention among the kept tokens, from their original positions."""
    allowed = torch.tensor([[j <= i and (window is None or i - j < window) for j in sel] for i in sel])[None, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def reference_routed_layer(wrapper: HFRoutedLayer, x, kwargs, valid, task, window, by_index=False):
    """One row at a time, plain Python selection, a mask built from scratch: the slow oracle.
    `by_index` measures the window by index among the kept tokens (the mistake to rule out)."""
    layer = wrapper.block
    scores = wrapper.router(x, task).detach()
    threshold = wrapper.mode == "threshold"
    decision = wrapper.decision_logits(x, task, scores).detach()
    cos, sin = kwargs["position_embeddings"]
    positions = kwargs["position_ids"]
    out = x.clone()
    for b in range(x.shape[0]):
        valid_idx = [i for i in range(x.shape[1]) if valid[b, i]]
        if threshold:
            chosen = [i for i in valid_idx if decision[b, i] > 0]
        else:
            cap = float(wrapper.capacity[min(int(task[b]), len(wrapper.capacity) - 1)])
            k = min(len(valid_idx), max(1, math.ceil(round(cap * len(valid_idx), 6))))
            chosen = sorted(sorted(valid_idx, key=lambda i: -float(scores[b, i]))[:k])
        if not chosen:
            continue
        sel = torch.tensor(chosen)
        order = list(range(len(chosen))) if by_index else chosen
        mask = reference_mask(order, window, wrapper.attn_implementation, x.dtype)
        pe = (cos[min(b, cos.shape[0] - 1), sel][None], sin[min(b, sin.shape[0] - 1), sel][None])
        pos = positions[min(b, positions.shape[0] - 1), sel][None]
        y = layer(x[b : b + 1, sel], attention_mask=mask, position_ids=pos, position_embeddings=pe)
        out[b, sel] = (y[0] if isinstance(y, tuple) else y)[0]  # the straight-through weight is 1 forward
    return out


def routed_layer_and_inputs(family, layer_idx, capacity, causal="none"):
    model = tiny_model(family)
    ids, valid = padded_batch()
    x, kwargs = captured_layer_inputs(model, layer_idx, ids, valid)
    routing = install_hf_routing(model, {layer_idx: capacity}, causal=causal)
    return routing.layers[layer_idx], x, kwargs, valid, routing


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("capacity", [[0.5], [0.25, 0.75]], ids=["mod", "unimod"])
def test_batched_wrapper_equals_per_row_reference(family, capacity):
    layer_idx = 2  # a sliding-window layer where the family has them (window < sequence length)
    wrapper, x, kwargs, valid, routing = routed_layer_and_inputs(family, layer_idx, capacity)
    task = torch.tensor([0, 1, 0, 1]) % len(capacity)
    with torch.no_grad(), routing.inputs(task=task):
        out, record = traced(wrapper, x, **kwargs)
        expected = reference_routed_layer(wrapper, x, kwargs, valid, task, window_of(family, layer_idx))
    assert record.kept.tolist() != LENGTHS  # a real selection
    torch.testing.assert_close(out[valid], expected[valid])


@pytest.mark.parametrize("family", FAMILIES)
def test_threshold_routed_layer_equals_per_row_reference(family):
    wrapper, x, kwargs, valid, routing = routed_layer_and_inputs(family, 2, [0.5], causal="predictor")
    wrapper.mode = "threshold"
    task = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        out, record = traced(wrapper, x, **kwargs)
        expected = reference_routed_layer(wrapper, x, kwargs, valid, task, window_of(family, 2))
    kept = record.kept
    assert ((kept > 0) & (kept < torch.tensor(LENGTHS))).any()
    torch.testing.assert_close(out[valid], expected[valid])


# ---- (g) sliding windows hold among the kept tokens in original positions ----------------------


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "mistral"])
def test_sliding_window_counts_original_positions_not_kept_indices(family):
    window = window_of(family, 2)
    assert window is not None and window < T_LEN
    wrapper, x, kwargs, valid, routing = routed_layer_and_inputs(family, 2, [0.5])
    assert wrapper.sliding_window == window  # read from the config through the family table
    task = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        out = wrapper(x, **kwargs)
        by_position = reference_routed_layer(wrapper, x, kwargs, valid, task, window)
        by_index = reference_routed_layer(wrapper, x, kwargs, valid, task, window, by_index=True)
    torch.testing.assert_close(out[valid], by_position[valid])
    assert not torch.allclose(out[valid], by_index[valid], atol=1e-4)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_sliding_window_when_the_model_passes_no_mask(family):
    """No padding, rows keeping different counts (threshold routing): the wrapper builds the
    windowed mask itself where transformers relies on SDPA's causal path or its own mask."""
    wrapper, x, kwargs, _, routing = routed_layer_and_inputs(family, 2, [0.5], causal="aux_bce")
    spread_routers(routing)
    wrapper.mode = "threshold"
    kwargs = dict(kwargs, attention_mask=None)
    x = x[:2]
    kwargs["position_embeddings"] = tuple(t[:1] for t in kwargs["position_embeddings"])
    valid = torch.ones(2, T_LEN, dtype=torch.bool)
    with torch.no_grad():
        out, record = traced(wrapper, x, **kwargs)
        expected = reference_routed_layer(wrapper, x, kwargs, valid, torch.zeros(2, dtype=torch.long), 3)
    assert record.kept[0] != record.kept[1] or record.kept[0] < T_LEN
    torch.testing.assert_close(out, expected)


# ---- (c) batch 1 and a padded batch agree row by row -------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_one_and_padded_batch_agree_row_by_row(family):
    model = tiny_model(family)
    routing = install_hf_routing(model, {1: [0.5], 2: [0.25, 0.75], 3: [0.3]})
    ids, valid = padded_batch()
    task = torch.tensor([0, 1, 1, 0])
    with routing.inputs(task=task):
        batched = logits(model, ids, valid)
    for b, n in enumerate(LENGTHS):
        with routing.inputs(task=task[b : b + 1]):
            alone = logits(model, ids[b : b + 1, :n])
        torch.testing.assert_close(batched[b, :n], alone[0])


# ---- (d) threshold routing is causal ----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("causal", ["aux_bce", "predictor"])
def test_threshold_routing_is_causal_and_top_k_is_not(family, causal):
    model = tiny_model(family)
    routing = install_hf_routing(model, {1: [0.25], 2: [0.25], 3: [0.25]}, causal=causal)
    spread_routers(routing)
    if causal == "predictor":
        for layer in routing.layers.values():
            torch.nn.init.normal_(layer.predictor.net[-1].weight, std=3.0)
    ids, _ = padded_batch()
    ids = ids[:2]
    future = ids.clone()
    future[:, 6:] = (future[:, 6:] + 7) % VOCAB  # change every token from position 6 on
    with threshold_routing(model), record_routing(model) as trace:
        a, b = logits(model, ids), logits(model, future)
    kept = [r.kept for r in trace.records[-len(routing.layers) :]]  # the second forward's layers
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert all(0 < int(k.sum()) < k.numel() * T_LEN for k in kept)  # a real choice was made in every layer
    # top-k over the row sees the future: the same perturbation changes earlier logits
    a, b = logits(model, ids), logits(model, future)
    assert not torch.allclose(a[:, :6], b[:, :6])


# ---- (e) routers get gradient -----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_routers_get_gradient_and_aux_loss(family):
    model = tiny_model(family).train()
    routing = install_hf_routing(model, {1: [0.5], 3: [0.5]}, causal="aux_bce")
    ids, valid = padded_batch()
    with record_routing(model) as trace:
        out = model(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits
    loss = F.cross_entropy(out[:, :-1][valid[:, 1:]], ids[:, 1:][valid[:, 1:]])
    loss.backward(retain_graph=True)  # the aux loss below shares the routers' graph
    for layer in routing.layers.values():
        assert layer.router.proj.weight.grad is not None and layer.router.proj.weight.grad.abs().sum() > 0
    aux, agreement = trace.causal_stats()
    assert aux is not None and 0.0 <= float(agreement) <= 1.0
    model.zero_grad()
    aux.backward()
    assert all(layer.router.proj.weight.grad.abs().sum() > 0 for layer in routing.layers.values())


def test_the_predictor_learns_alone():
    model = tiny_model("llama").train()
    routing = install_hf_routing(model, {2: [0.25]}, causal="predictor")
    ids, valid = padded_batch()
    with record_routing(model) as trace:
        model(input_ids=ids, attention_mask=valid.long(), use_cache=False)
    layer = routing.layers[2]
    trace.last().aux_loss.backward()
    assert layer.router.proj.weight.grad is None
    assert layer.predictor.net[0].weight.grad.abs().sum() > 0


# ---- (f) kept counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_counts_are_ceil_of_capacity_times_valid_tokens(family):
    model = tiny_model(family)
    capacities = {1: [0.3], 2: [0.25, 0.75], 3: [1.0, 0.125]}
    routing = install_hf_routing(model, capacities)
    ids, valid = padded_batch()
    task = torch.tensor([0, 1, 0, 1])
    with routing.inputs(task=task), record_routing(model) as trace:
        logits(model, ids, valid)
    for i in routing.layers:
        caps = capacities[i]
        expected = [math.ceil(round(caps[min(int(t), len(caps) - 1)] * n, 6)) for t, n in zip(task, LENGTHS)]
        (record,) = trace.layer(i)
        assert record.kept.tolist() == expected, i
        assert not (record.selected & ~valid).any()  # padding is never kept


# ---- (h) wiring and errors ---------------------------------------------------------------------


def test_routing_config_installs_and_plan_helpers_find_the_layers():
    model = tiny_model("qwen2")
    routing = apply_hf_routing(model, RoutingConfig(kind="mod", layers=[1, 3], capacity=0.25))
    assert sorted(routing.layers) == [1, 3]
    assert routed_blocks(model) == [routing.layers[1], routing.layers[3]]
    assert all(isinstance(decoder_layers(model)[i], HFRoutedLayer) for i in (1, 3))


def test_errors_are_one_line_config_errors():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match=r"routed layer 4 is out of range \(the model has layers 0..3\)"):
        install_hf_routing(model, {4: [0.5]})
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        install_hf_routing(model, {1: [1.5]})
    install_hf_routing(model, {1: [0.5]})
    with pytest.raises(ConfigError, match="already routed"):
        install_hf_routing(model, {1: [0.5]})
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError, match="'gpt2' is not supported; supported: llama, mistral, qwen2") as e:
        install_hf_routing(gpt2, {0: [0.5]})
    assert "\n" not in str(e.value) and all(name in str(e.value) for name in FAMILIES)


def test_top_k_routing_refuses_to_decode_with_a_cache():
    model = tiny_model("llama")
    install_hf_routing(model, {2: [0.5]})
    ids, _ = padded_batch()
    with torch.no_grad():
        out = model(input_ids=ids[:1, :8], use_cache=True)
        with pytest.raises(ConfigError, match="cannot decode with a KV cache"):
            model(input_ids=ids[:1, 8:9], cache=out.past_key_values, use_cache=True)


# ---- compact KV cache for threshold-mode greedy decoding ---------------------------------------


def decoding_model(family: str):
    """Layers 2 and 3 routed by threshold (layer 0 and the first layer of each attention type
    size transformers' decode masks and stay dense); routers spread so that both outcomes occur."""
    model = tiny_model(family)
    routing = install_hf_routing(model, {2: [0.5], 3: [0.5]}, causal="aux_bce")
    spread_routers(routing)
    return model, routing


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_decoding_equals_recomputation_and_caches_only_tokens_that_ran(family):
    from modlab.routing.hf_decode import greedy_decode

    model, routing = decoding_model(family)
    ids = padded_batch()[0][:1, :8]
    with threshold_routing(model):
        with record_routing(model) as trace:
            cached, cached_logits, cache = greedy_decode(model, ids, 10)
        ran = {i: sum(int(r.selected.sum()) for r in trace.layer(i)) for i in routing.layers}
        recomputed, recomputed_logits, _ = greedy_decode(model, ids, 10, use_cache=False)
    assert torch.equal(cached, recomputed)
    torch.testing.assert_close(cached_logits, recomputed_logits)
    n_tokens = ids.shape[1] + 10 - 1  # the last token is chosen, never fed back
    assert cache.layers[0].get_seq_length() == n_tokens
    entries = routing.cache_entries(cache)
    for i in routing.layers:
        assert cache.layers[i].get_seq_length() == ran[i]  # K/V written: exactly the tokens that ran
        window = window_of(family, i)
        assert int(entries[i].sum()) == (ran[i] if window is None else min(ran[i], window - 1))
    assert min(ran.values()) < n_tokens  # some layer really skipped tokens


@pytest.mark.parametrize("family", ["llama", "phi", "gemma"])
def test_cached_decoding_of_several_rows_equals_recomputation(family):
    from modlab.routing.hf_decode import greedy_decode

    model, routing = decoding_model(family)
    ids = padded_batch()[0][:3, :8]
    with threshold_routing(model):
        cached, cached_logits, cache = greedy_decode(model, ids, 8)
        recomputed, recomputed_logits, _ = greedy_decode(model, ids, 8, use_cache=False)
    assert torch.equal(cached, recomputed)
    torch.testing.assert_close(cached_logits, recomputed_logits)
    entries = routing.cache_entries(cache)
    assert any(len(set(e.tolist())) > 1 for e in entries.values())  # rows cache different counts


def test_decoding_refuses_a_routed_layer_that_sizes_the_masks():
    from modlab.routing.hf_decode import greedy_decode

    model = tiny_model("llama")
    routing = install_hf_routing(model, {0: [0.5]}, causal="aux_bce")
    spread_routers(routing)
    with threshold_routing(model), pytest.raises(ConfigError, match="layer 0 cannot be routed while decoding"):
        greedy_decode(model, padded_batch()[0][:1, :8], 3)


def test_a_preallocated_static_cache_is_refused_in_one_line():
    """A StaticCache reports its whole preallocated length as stored: the compact cache would
    attend to slots nobody wrote and decode wrong tokens without an error (Janus's image
    generation builds one by default)."""
    from transformers import StaticCache

    model = tiny_model("llama")
    routing = install_hf_routing(model, {2: [0.5]}, causal="aux_bce")
    spread_routers(routing)
    ids, _ = padded_batch()
    cache = StaticCache(config=model.config, max_cache_len=32)
    with torch.no_grad(), threshold_routing(model), pytest.raises(ConfigError, match="needs a growing KV cache"):
        model(input_ids=ids[:1, :8], cache=cache, use_cache=True)
