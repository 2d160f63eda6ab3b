"""Generation with a KV cache, and the prefill / decode speed of a routed model against its base.

The MindSkip decision is made at prefill and held while decoding; a closed layer's attention is
never called, so it runs no projections and keeps no KV entry. Uncached generation recomputes
the whole sequence at every step with the same held decisions, so the two agree token for token.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext

import torch


@contextmanager
def autocast_weight_cache(module: torch.nn.Module):
    """Let bf16 autocast cast each weight once, not at every call. Autocast keeps its bf16 copy
    of a weight for the whole autocast region only if the weight requires grad: a frozen model
    (Router-Tuning freezes the base) was re-cast on every decode step, every linear layer and the
    full-vocabulary head included (Gemma 3 270M: most of a step's time went to aten::copy_). Under
    no_grad nothing records a graph, so marking the weights for the measurement changes no
    result; their flags are restored after."""
    frozen = [p for p in module.parameters() if not p.requires_grad and p.is_floating_point()]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.no_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _ctx(skip, reuse: bool):
    return skip.context(reuse=reuse) if skip is not None else nullcontext()


@torch.no_grad()
def generate(lm, ids: torch.Tensor, max_new_tokens: int, skip=None, use_cache: bool = True) -> torch.Tensor:
    """Greedy continuation of unpadded prompts (B, T) -> (B, T + max_new_tokens)."""
    cache = lm.new_cache() if use_cache else None
    with _ctx(skip, reuse=False):
        logits = lm(ids, cache=cache, last_only=True)
    out = ids
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        if step == max_new_tokens - 1:
            break
        with _ctx(skip, reuse=True):
            logits = lm(nxt, cache=cache) if use_cache else lm(out, last_only=True)
    return out


def generation_flops(token_flops, open_layers: list[bool], prompt_len: int, new_tokens: int) -> tuple[int, int]:
    """Matmul FLOPs of one prefill over `prompt_len` tokens (the full T x T attention, as it is
    computed; the head on the last position only, as generation runs it) and of `new_tokens` - 1
    cached decode steps, with the given layers' attention on."""
    f, T = token_flops, prompt_len
    n_open, n_layer = sum(open_layers), len(open_layers)
    prefill = T * (n_open * f.attn_linear + n_layer * f.mlp) + f.head + n_open * f.attn_per_key * T * T
    decode = 0
    for s in range(1, new_tokens):
        decode += n_open * (f.attn_linear + f.attn_per_key * (T + s)) + n_layer * f.mlp + f.head
    return prefill, decode


@torch.no_grad()
def measure_speed(
    lm,
    skip,
    prompts: list[torch.Tensor],
    new_tokens: int,
    variants: dict[str, dict],
    repeats: int = 3,
    autocast: bool = False,
    advance=None,
) -> dict[str, dict]:
    """Prefill and decode tokens per second of each variant (kwargs of `skip.variant`) on batch-1
    prompts, median over `repeats` rounds; the variants alternate within a round so that load
    changes on a shared machine hit them alike. Also the FLOPs each variant really ran.
    `advance` is called after each generated prompt ((repeats + 1) x variants x prompts)."""
    times = {name: {"prefill": [], "decode": []} for name in variants}
    flops = {}
    n_prefill = sum(p.shape[1] for p in prompts)
    n_decode = len(prompts) * (new_tokens - 1)
    tf = lm.token_flops()
    weights = autocast_weight_cache(lm) if autocast else nullcontext()
    with weights, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for r in range(repeats + 1):  # round 0 warms up
            for name, kw in variants.items():
                pre = dec = 0.0
                fl = [0, 0]
                with skip.variant(**kw):
                    for p in prompts:
                        cache = lm.new_cache()
                        t0 = time.perf_counter()
                        with skip.context(reuse=False):
                            logits = lm(p, cache=cache, last_only=True)
                        t1 = time.perf_counter()
                        with skip.context(reuse=True):
                            for _ in range(new_tokens - 1):
                                logits = lm(logits[:, -1:].argmax(-1), cache=cache)
                        t2 = time.perf_counter()
                        pre, dec = pre + t1 - t0, dec + t2 - t1
                        a, b = generation_flops(tf, skip.open_layers(), p.shape[1], new_tokens)
                        fl = [fl[0] + a, fl[1] + b]
                        if advance:
                            advance()
                if r:
                    times[name]["prefill"].append(pre)
                    times[name]["decode"].append(dec)
                flops[name] = fl
    out = {}
    for name in variants:
        pre, dec = statistics.median(times[name]["prefill"]), statistics.median(times[name]["decode"])
        out[name] = {
            "prefill_tok_s": n_prefill / pre,
            "decode_tok_s": n_decode / dec,
            "prefill_flops": flops[name][0],
            "decode_flops": flops[name][1],
        }
    return out
