"""The Emu3-like model's KV cache for image generation (Emu3.draw_images): prefill each prompt
once, then one token per step. Against the oracle that recomputes the whole prefix for every
token (use_cache=False): the same tokens and logits, greedy and sampled, dense and routed (MoD,
UniMoD per task) in threshold mode, several rows with different caption lengths, guidance on;
and a routed layer's cache holds exactly the tokens that ran it, per row. fp32 throughout."""

from __future__ import annotations

import pytest
import torch

from modlab.data.rows import collate_rows, t2i_row
from modlab.data.tokens import TokenSpace
from modlab.errors import ConfigError
from modlab.models.config import ModelConfig
from modlab.models.emu3 import Emu3
from modlab.models.kv_cache import KVCache
from modlab.models.transformer import Block
from modlab.routing.install import RouteInfo, install_routing, routed_blocks, threshold_routing
from modlab.routing.routed_block import RoutedBlock
from modlab.routing.trace import record_routing

CFG = ModelConfig(arch="emu3", d_model=32, n_layer=4, n_head=2)
SP = TokenSpace(17)
N_IMG = 8
# capacities per routed layer: one router (MoD), or one per task id t2i, mmu, lm (UniMoD; T2I is
# dense in layer 1 there, so its tokens all run and are all cached)
ROUTINGS = {
    "dense": ({}, "none"),
    "mod": ({1: [0.5], 3: [0.5]}, "aux_bce"),
    "unimod": ({1: [1.0, 0.3, 1.0], 2: [0.4, 0.3, 1.0], 3: [0.3, 0.3, 1.0]}, "predictor"),
}


def tiny_emu3(routing: str) -> Emu3:
    torch.manual_seed(0)
    model = Emu3(CFG, SP, N_IMG).eval()
    layers, causal = ROUTINGS[routing]
    install_routing(model.transformer.blocks, CFG.d_model, layers, "ste_sigmoid", causal)
    for b in routed_blocks(model):  # decision logits of both signs: threshold routing really chooses
        decider = b.router.proj if b.predictor is None else b.predictor.net[-1]
        torch.nn.init.normal_(decider.weight, std=1.0)
    return model


def prompts() -> dict:
    """Three T2I prompts whose captions differ in length: their images start at different positions."""
    rows = [t2i_row(SP, c, None, N_IMG, d) for c, d in (("a 1", 1), ("a seven", 7), ("four", 4))]
    return collate_rows(rows, SP.pad)


def greedy(model: Emu3, use_cache: bool, guidance: float = 1.5):
    """(codes, the guided logits of every step (B, n, codes), the cache) of argmax drawing."""
    seen = []

    def draw(logits):
        seen.append(logits)
        return logits.argmax(-1)

    codes, cache = model.draw_images(prompts(), draw, guidance, use_cache)
    return codes, torch.stack(seen, 1), cache


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_cached_greedy_drawing_equals_recomputation(routing, guidance):
    model = tiny_emu3(routing)
    cached, cached_logits, cache = greedy(model, True, guidance)
    recomputed, recomputed_logits, none = greedy(model, False, guidance)
    assert isinstance(cache, KVCache) and none is None
    assert torch.equal(cached, recomputed)
    torch.testing.assert_close(cached_logits, recomputed_logits)
    assert len(set(cached.flatten().tolist())) > 1  # not a degenerate constant image


@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_sampling_with_the_same_generator_gives_the_same_images_with_and_without_cache(routing):
    model = tiny_emu3(routing)
    p = prompts()
    images = [
        model.sample_images(p, guidance=1.5, temperature=1.0, generator=torch.Generator().manual_seed(3), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(images[0], images[1])
    assert images[0].shape == (3, N_IMG) and images[0].min() >= 0 and images[0].max() < 17


def seen_tokens(p: dict) -> torch.Tensor:
    """(B, T) what the cache ran: each row's prompt up to its [SOI] and every image token but the
    last (which is drawn, never fed back)."""
    last = p["is_image"].nonzero()[:, 1].view(len(p["ids"]), -1)[:, -1]
    return p["valid"] & (torch.arange(p["ids"].shape[1])[None] < last[:, None])


@pytest.mark.parametrize("routing", ["mod", "unimod"])
def test_each_layer_caches_exactly_the_tokens_that_ran_it_per_row(routing):
    """Per layer and row (conditional rows, then the caption-less guidance rows): cached entries
    == the tokens that ran the layer, both as the cached run's own routing recorded it and as one
    recomputed forward over the drawn image decides (threshold routing)."""
    model = tiny_emu3(routing)
    with record_routing(model) as trace:
        codes, _, cache = greedy(model, True)
    p = prompts()
    img = p["is_image"].nonzero()[:, 1].view(3, -1)
    full = p["ids"].scatter(1, img, codes + SP.image_offset)
    seen = seen_tokens(p)
    valid = torch.cat([seen, seen & ~p["cond"]])  # the rows the cache holds
    with threshold_routing(model), record_routing(model) as oracle, torch.no_grad():
        model(full.repeat(2, 1), p["is_image"].repeat(2, 1), valid, p["task"].repeat(2))
    entries = cache.row_entries()
    routed = {b.layer_index for b in routed_blocks(model)}
    for i in range(CFG.n_layer):
        if i not in routed:  # a dense layer caches every real token it saw
            assert torch.equal(entries[i], valid.sum(1))
            continue
        (decided,) = oracle.layer(i)
        ran = sum(r.selected.sum(1) for r in trace.layer(i))
        assert torch.equal(entries[i], ran) and torch.equal(entries[i], decided.selected.sum(1))
    skipping = [i for i in routed if bool((entries[i] < valid.sum(1)).any())]
    assert skipping  # some layer really skipped tokens, ...
    assert any(len(set(entries[i].tolist())) > 1 for i in skipping)  # ... rows keep different counts
    if routing == "unimod":  # T2I is dense in layer 1 (capacity 1): every token runs and is cached
        assert torch.equal(entries[1], valid.sum(1))


def test_a_top_k_only_routed_model_recomputes():
    """A routed layer without a causal decision routes by top-k over the whole prefix: no cache."""
    torch.manual_seed(0)
    model = Emu3(CFG, SP, N_IMG).eval()
    install_routing(model.transformer.blocks, CFG.d_model, {2: [0.5]}, "ste_sigmoid", "none")
    codes, _, cache = greedy(model, True)
    assert cache is None and torch.equal(codes, greedy(model, False)[0])


def test_a_routed_block_refuses_to_fill_a_cache_with_top_k():
    rb = RoutedBlock(Block(CFG), CFG.d_model, [0.5], causal="aux_bce")
    x, valid = torch.randn(1, 4, CFG.d_model), torch.ones(1, 4, dtype=torch.bool)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    args = (x, torch.arange(4)[None], mask, RouteInfo(task=torch.zeros(1, dtype=torch.long), valid=valid))
    with pytest.raises(ConfigError, match="cannot decode with a KV cache"):
        rb(*args, cache=KVCache(1).layers[0])
    with threshold_routing(rb):
        rb(*args, cache=KVCache(1).layers[0])
