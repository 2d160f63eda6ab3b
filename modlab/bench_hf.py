"""Mixture-of-Depths inside a Hugging Face model: the training step of a tiny random Llama (4 layers,
hidden 512, 8 heads, batch 4 x 1,024 tokens) with capacity 0.125 on every other layer, against the
unmodified model, beside the speed-up its FLOPs predict.

    python -m modlab.bench_hf [--repeats N] [--seq T] [--batch B] [--capacity C] [--decode]
    python -m modlab.bench_hf --vs-generate [DIR]   # dense decoding vs transformers' generate()

As in modlab.bench, the two are timed in alternation (dense, routed, dense, ...) so a change of
machine load hits both alike, and each keeps its fastest repeat. The prediction is the ratio of
analytic training FLOPs (modlab.routing.hf_flops, the count for every supported family: matrix
multiplications only, counted as torch's FlopCounterMode counts them: attention as the full T x T
square, backward = 2x forward).

`--decode` adds batch-1 greedy decoding under threshold routing with the compact KV cache
(modlab.routing.hf_decode) against the unmodified model: decode tokens/s and cached K/V entries.
Its routers are untrained (random directions, so about half the tokens run a routed layer): the
figures show what the cache saves at the fraction that ran, which is printed beside them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from modlab.data.rows import collate_rows, left_pad
from modlab.hf_layer_map import decoder_layers, text_config
from modlab.models.hf_tiny import tiny_causal_lm_config, tiny_emu3
from modlab.models.hf_unified.loader import load_hf_unified
from modlab.routing.hf_decode import greedy_decode
from modlab.routing.hf_flops import linear_weights, query_width, train_step_flops
from modlab.routing.hf_routed_layer import install_hf_routing, unrouted
from modlab.routing.install import threshold_routing
from modlab.routing.trace import record_routing


def routed_groups(model: nn.Module, run) -> dict[int, list[tuple[int, int]]]:
    """What each routed layer of a transformers model ran during `run()` (its (rows, K) calls)."""
    with record_routing(model) as trace:
        run()
    return trace.flops_groups()[0]


def bench_llama_config(seq: int = 1024, attn_implementation: str = "sdpa"):
    return tiny_causal_lm_config(
        "llama",
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1408,  # ~8/3 d, as Llama sizes its SwiGLU
        vocab_size=1024,
        max_position_embeddings=seq,
        attn_implementation=attn_implementation,
    )


def train_step(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token loss, forward and backward (no optimiser: it is the same for both models)."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, use_cache=False).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach()


def interleaved_seconds(fns: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Seconds per call of each fn, timed in alternation; the fastest of `repeats` runs each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def bench_hf_mod_training(
    batch: int = 4, seq: int = 1024, capacity: float = 0.125, repeats: int = 5, seed: int = 0
) -> dict:
    """Time the training step of the routed vs the unmodified tiny Llama; measured and predicted speed-up."""
    torch.manual_seed(seed)
    config = bench_llama_config(seq)
    dense = LlamaForCausalLM(config).train()
    routed = copy.deepcopy(dense)
    layers = list(range(1, config.num_hidden_layers, 2))  # every other layer: 1, 3
    install_hf_routing(routed, {i: [capacity] for i in layers})
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    seconds = interleaved_seconds(
        {"dense": lambda: train_step(dense, ids), "routed": lambda: train_step(routed, ids)}, repeats
    )
    dense_flops = train_step_flops(dense, batch, seq)
    routed_flops = train_step_flops(routed, batch, seq, routed_groups(routed, lambda: train_step(routed, ids)))
    measured, predicted = seconds["dense"] / seconds["routed"], dense_flops / routed_flops
    return {
        "batch": batch,
        "seq": seq,
        "capacity": capacity,
        "routed_layers": layers,
        "kept_per_routed_layer": math.ceil(capacity * seq - 1e-6),
        "threads": torch.get_num_threads(),
        "dense_s": seconds["dense"],
        "routed_s": seconds["routed"],
        "dense_tflop": dense_flops / 1e12,
        "routed_tflop": routed_flops / 1e12,
        "measured_speedup": measured,
        "predicted_speedup": predicted,
        "measured_over_predicted": measured / predicted,
    }


def bench_hf_mod_decoding(prompt: int = 256, new: int = 64, repeats: int = 3, seed: int = 0) -> dict:
    """Batch-1 greedy decoding, routed (threshold mode, compact cache; layers 1, 3) vs unmodified."""
    torch.manual_seed(seed)
    config = bench_llama_config(prompt + new)
    dense = LlamaForCausalLM(config).eval()
    routed = copy.deepcopy(dense)
    layers = list(range(1, config.num_hidden_layers, 2))
    routing = install_hf_routing(routed, {i: [0.125] for i in layers}, causal="aux_bce")
    ids = torch.randint(0, config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(prompt)[None]

    def prefill(model):
        with torch.no_grad():
            model(input_ids=ids, position_ids=positions, cache=DynamicCache(config=config), use_cache=True)

    with threshold_routing(routed):
        seconds = interleaved_seconds(
            {
                "dense": lambda: greedy_decode(dense, ids, new),
                "routed": lambda: greedy_decode(routed, ids, new),
                "dense_prefill": lambda: prefill(dense),
                "routed_prefill": lambda: prefill(routed),
            },
            repeats,
        )
        routed_tokens, _, cache = greedy_decode(routed, ids, new)
    dense_tokens, _, _ = greedy_decode(dense, ids, new)
    per_token = 2 * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads) * 4  # K and V, fp32
    n_cached = prompt + new - 1
    dense_entries = config.num_hidden_layers * n_cached
    routed_entries = sum(cache.layers[i].get_seq_length() for i in range(config.num_hidden_layers))
    decode = {name: seconds[name] - seconds[f"{name}_prefill"] for name in ("dense", "routed")}
    return {
        "prompt": prompt,
        "new_tokens": new,
        "routed_layers": layers,
        "fraction_that_ran_routed_layers": {i: cache.layers[i].get_seq_length() / n_cached for i in routing.layers},
        "same_tokens_as_dense": bool(torch.equal(routed_tokens, dense_tokens)),  # untrained routers: not expected
        "dense_decode_tok_s": (new - 1) / decode["dense"],
        "routed_decode_tok_s": (new - 1) / decode["routed"],
        "decode_speedup": decode["dense"] / decode["routed"],
        "dense_kv_entries": dense_entries,
        "routed_kv_entries": routed_entries,
        "dense_kv_mib": dense_entries * per_token / 2**20,
        "routed_kv_mib": routed_entries * per_token / 2**20,
        "kv_saving": 1 - routed_entries / dense_entries,
    }


def sync(device) -> None:
    """Wait for the device's queued work (a CUDA timing must not stop at the last launch)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bench_clock(device="cpu"):
    """What a benchmark times with: on a CPU with one torch thread, the CPU time of this thread
    (all the work runs on it, and time spent waiting for a core that other processes of a shared
    machine hold is not counted); else wall-clock time."""
    if torch.device(device).type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def median_seconds(fns: dict, repeats: int, device="cpu", warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, timed in alternation (dense, routed, dense, ...)."""
    clock = bench_clock(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = clock()
            fn()
            sync(device)
            times[name].append(clock() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def layer_inputs(model: nn.Module, layers: list[int], ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """(tokens, d) hidden states entering each of these decoder layers in a forward over `ids`."""
    blocks, seen, hooks = decoder_layers(model), {}, []
    for i in layers:
        hooks.append(
            blocks[i].register_forward_pre_hook(
                lambda m, a, kw, i=i: seen.__setitem__(i, (a[0] if a else kw["hidden_states"]).detach()),
                with_kwargs=True,
            )
        )
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {i: h.flatten(0, 1).float() for i, h in seen.items()}


def set_router_fraction(model: nn.Module, routing, ids: torch.Tensor, fraction: float) -> None:
    """Point each routed layer's router so that its causal decision (logit > 0) runs about
    `fraction` of the tokens of `ids`: w = w0 + a * m, m the mean hidden state entering the
    layer, a found by bisection (the router has no bias; m . x is mostly positive, so a shifts
    the logits of most tokens alike). Routed layers change the inputs of later ones, so the
    fraction that really runs is measured, not assumed."""
    for i, layer in sorted(routing.layers.items()):
        x = layer_inputs(model, [i], ids)[i]
        w0 = layer.router.proj.weight.detach().float().clone()
        m = x.mean(0, keepdim=True)
        m = m / m.norm()
        base, along = x @ w0.T, x @ m.T  # (tokens, n_routers), (tokens, 1)
        lo, hi = -1e3, 1e3
        for _ in range(60):
            a = (lo + hi) / 2
            if float(((base + a * along) > 0).float().mean()) < fraction:
                lo = a
            else:
                hi = a
        with torch.no_grad():
            layer.router.proj.weight.copy_((w0 + hi * m).to(layer.router.proj.weight.dtype))


def decode_flops_per_token(model, context: float, ran: dict[int, float] | None = None) -> float:
    """Matmul FLOPs of one decode step per row of a transformers CausalLM (counted from the modules
    its layers hold, modlab.routing.hf_flops): every layer's projections and MLP, attention
    against `context` cached keys, the head; a routed layer i runs for a fraction ran[i] of the
    tokens, against its compact cache (about ran[i] * context entries), plus its router."""
    ran = ran or {}
    config = text_config(model.config)
    q = query_width(config)
    total = 2 * config.hidden_size * config.vocab_size
    for i, layer in enumerate(decoder_layers(model)):
        linear = 2 * linear_weights(getattr(layer, "block", layer))
        f = ran.get(i, 1.0)
        total += f * (linear + 2 * 2 * q * f * context) + (2 * config.hidden_size if i in ran else 0)
    return total


def bench_hf_decode(
    hidden: int = 512,
    batch: int = 1,
    fraction: float = 0.5,
    prompt: int = 128,
    new: int = 32,
    n_layer: int = 4,
    heads: int | None = None,
    repeats: int = 3,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict:
    """Greedy decoding of a random Llama (`hidden` wide, `n_layer` layers, every other one routed
    from layer 1, routers set to run `fraction` of the tokens, threshold routing, compact KV
    cache) against the same model unrouted with transformers' cache: decode tokens/s (prefill
    excluded), the FLOPs-predicted speed-up at the fractions that really ran, and KV memory."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=n_layer,
        num_attention_heads=heads or max(1, hidden // 64),
        num_key_value_heads=heads or max(1, hidden // 64),
        intermediate_size=int(hidden * 8 / 3) // 64 * 64 or 64,
        vocab_size=1024,
        max_position_embeddings=prompt + new,
        attn_implementation="sdpa",
    )
    dense = LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)
    routed = copy.deepcopy(dense)
    layers = list(range(1, n_layer, 2))
    routing = install_hf_routing(routed, {i: [0.125] for i in layers}, causal="aux_bce")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, prompt), generator=gen).to(device)
    set_router_fraction(routed, routing, ids, fraction)

    def decode(model, n):
        return lambda: greedy_decode(model, ids, n)

    with threshold_routing(routed):
        # decode time = (prefill + new steps) - (prefill + 1 step): the prefill cancels
        s = median_seconds(
            {
                "dense": decode(dense, new),
                "routed": decode(routed, new),
                "dense1": decode(dense, 1),
                "routed1": decode(routed, 1),
            },
            repeats,
            device,
        )
        with record_routing(routed) as trace:
            _, _, cache = greedy_decode(routed, ids, new)
    steps = batch * (new - 1)
    dense_s, routed_s = s["dense"] - s["dense1"], s["routed"] - s["routed1"]
    n_cached = prompt + new - 1
    entries = routing.cache_entries(cache)
    ran = {i: float(entries[i].sum()) / (batch * n_cached) for i in layers}
    decided = {i: sum(float(r.selected.sum()) for r in trace.layer(i)) / (batch * n_cached) for i in layers}
    context = prompt + new / 2
    predicted = decode_flops_per_token(dense, context) / decode_flops_per_token(dense, context, ran)
    head_dim = hidden // config.num_attention_heads
    per_entry = 2 * config.num_key_value_heads * head_dim * torch.empty((), dtype=dtype).element_size()
    dense_entries = n_layer * batch * n_cached
    routed_entries = (n_layer - len(layers)) * batch * n_cached + sum(int(entries[i].sum()) for i in layers)
    return {
        "hidden": hidden,
        "batch": batch,
        "n_layer": n_layer,
        "target_fraction": fraction,
        "routed_layers": layers,
        "ran": ran,
        "ran_decided": decided,
        "dense_tok_s": steps / dense_s,
        "routed_tok_s": steps / routed_s,
        "speedup": dense_s / routed_s,
        "predicted_speedup": predicted,
        "measured_over_predicted": (dense_s / routed_s) / predicted,
        "dense_kv_mib": dense_entries * per_entry / 2**20,
        "routed_kv_mib": routed_entries * per_entry / 2**20,
        "decode_flops_per_token_dense": decode_flops_per_token(dense, context),
        "decode_flops_per_token_routed": decode_flops_per_token(dense, context, ran),
    }


def bench_hf_emu3_generation(
    hidden: int = 256,
    n_layer: int = 8,
    batch: int = 4,
    guidance: float = 1.5,
    repeats: int = 3,
    fit_steps: int = 60,
    seed: int = 0,
) -> dict:
    """Greedy T2I generation with a Hugging Face Emu3 (random weights, `hidden` wide, `n_layer`
    layers, a tiny VQ: 64 codes + 8 end-of-line tokens per image), `batch` prompts with
    classifier-free guidance (2 x batch rows, one batch): UniMoD (image tokens routed at capacity
    0.125 in the odd layers) with the compact KV cache vs the same model unrouted with its cache.
    Generation routes by the causal decision (threshold), so the routers are first fitted to it:
    `fit_steps` steps of the aux BCE against top-k on the T2I rows dense generation draws, the
    model frozen (random routers keep most tokens); the fraction of each routed layer's K/V
    entries that remain (prompt tokens included: they always run) is reported."""
    model, processor = tiny_emu3(n_layer=n_layer, hidden=hidden, heads=max(1, hidden // 64), seed=seed)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        processor.save_pretrained(d)
        m = load_hf_unified(d, dtype="float32")
    layers = list(range(1, n_layer, 2))
    m.routing = install_hf_routing(m.hf, {i: [0.125, 0.125, 1.0] for i in layers}, causal="aux_bce")
    captions = [f"a handwritten digit {b % 10}" for b in range(batch)]
    prompts = left_pad([m.t2i_prompt(c) for c in captions], m.pad)

    def greedy(scores):
        return scores.argmax(-1)

    with unrouted(m.routing):  # the images dense generation draws: what the routers are fitted on
        drawn, _ = m.draw_images(prompts, greedy, guidance)
    fit_routers_to_capacity(m, fit_steps, [m.t2i_row(c, codes) for c, codes in zip(captions, drawn)])

    def dense():
        with unrouted(m.routing):
            return m.draw_images(prompts, greedy, guidance)

    def routed():
        return m.draw_images(prompts, greedy, guidance)

    seconds = interleaved_seconds({"dense": dense, "routed": routed}, repeats)
    (_, dense_cache), (_, routed_cache) = dense(), routed()
    n_image = m.codec.n_tokens + m.codec.grid[0]  # codes and end-of-line tokens drawn per image
    entries = {
        name: sum(layer.get_seq_length() for layer in c.layers)
        for name, c in (("dense", dense_cache), ("routed", routed_cache))
    }
    per_layer_routed = {
        i: routed_cache.layers[i].get_seq_length() / dense_cache.layers[i].get_seq_length() for i in layers
    }
    return {
        "hidden": hidden,
        "n_layer": n_layer,
        "rows": 2 * batch if guidance > 0 else batch,
        "image_tokens": n_image,
        "routed_layers": layers,
        "kv_kept_in_routed_layers": per_layer_routed,
        "dense_tok_s": batch * n_image / seconds["dense"],
        "routed_tok_s": batch * n_image / seconds["routed"],
        "speedup": seconds["dense"] / seconds["routed"],
        "dense_kv_entries": entries["dense"],
        "routed_kv_entries": entries["routed"],
        "kv_saving": 1 - entries["routed"] / entries["dense"],
    }


def fit_routers_to_capacity(m, steps: int, rows: list[dict]) -> None:
    """Train the routers of `m` (an HFUnifiedModel) alone on the causal decision's aux BCE
    against top-k on `rows`, so threshold routing keeps about the capacity on such rows."""
    batch = collate_rows(rows, m.pad)
    m.requires_grad_(False)
    params = [p for layer in m.routing.layers.values() for p in layer.router.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=3e-2)
    for _ in range(steps):
        with record_routing(m) as trace:
            m.task_losses(batch)
        aux, _ = trace.causal_stats()
        opt.zero_grad()
        aux.backward()
        opt.step()
    m.requires_grad_(False)


def bench_decode_vs_generate(
    model_dir: str | None = None, prompt: int = 128, new: int = 32, repeats: int = 3, seed: int = 0
) -> dict:
    """modlab's dense cached decoding (the loop MindSkip's speed test times) against transformers'
    own greedy `generate()` on the same model, prompt, dtype and threads: batch 1, decode tokens/s
    of each (generate's decode time = generate(new) - generate(1), i.e. new - 1 steps), measured
    in alternation round by round, medians. `model_dir` None: a tiny random Llama."""
    from modlab.mindskip.gate import MindSkip
    from modlab.mindskip.inference import measure_speed
    from modlab.models.hf_causal_lm import HFCausalLM, load_hf_causal_lm
    from modlab.models.hf_tiny import tiny_causal_lm

    if model_dir:
        lm, _ = load_hf_causal_lm(model_dir)
    else:
        lm = HFCausalLM(tiny_causal_lm("llama", seed, hidden_size=256, intermediate_size=688).eval(), "tiny llama")
    ids = torch.randint(0, min(lm.vocab_size, 32000), (1, prompt), generator=torch.Generator().manual_seed(seed))
    skip = MindSkip(lm, [])  # nothing routed: the base model's loop

    def hf_seconds(n: int) -> float:
        t0 = time.perf_counter()
        lm.hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)
        return time.perf_counter() - t0

    ours, theirs = [], []
    with torch.no_grad():
        hf_seconds(new)  # warm-up
        for _ in range(repeats):
            ours.append(measure_speed(lm, skip, [ids], new, {"base": {"routers": False}}, 1)["base"]["decode_tok_s"])
            theirs.append((new - 1) / max(hf_seconds(new) - hf_seconds(1), 1e-9))
    mod, hf = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
    return {
        "model": model_dir or "tiny llama (hidden 256)",
        "threads": torch.get_num_threads(),
        "prompt": prompt,
        "new_tokens": new,
        "modlab_decode_tok_s": mod,
        "generate_decode_tok_s": hf,
        "modlab_over_generate": mod / hf,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--capacity", type=float, default=0.125)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--decode", action="store_true", help="also time batch-1 decoding with the compact KV cache")
    p.add_argument(
        "--vs-generate",
        nargs="?",
        const="",
        metavar="DIR",
        help="only: modlab's dense decoding vs transformers' generate() on DIR (default: a tiny random Llama)",
    )
    args = p.parse_args(argv)
    if args.vs_generate is not None:
        print(json.dumps(bench_decode_vs_generate(args.vs_generate or None, repeats=args.repeats), indent=2))
        return
    result = {"training": bench_hf_mod_training(args.batch, args.seq, args.capacity, args.repeats)}
    if args.decode:
        result["decoding"] = bench_hf_mod_decoding(repeats=max(1, args.repeats // 2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
