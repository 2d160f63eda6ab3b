"""Evaluating a routed causal LM the way the Router-Tuning paper does: held-out perplexity and
capacity of the routed model, of its base, and of the static attention drop (LLM-Drop) that
skips the same number of attention executions; and batch-1 prefill / decode speed of all three
beside the FLOPs-predicted speed-up."""

from __future__ import annotations

import torch

from modlab.evaluation.perplexity import TokenPerplexity
from modlab.mindskip.inference import measure_speed
from modlab.mindskip.static_drop import attention_similarity, layers_to_drop
from modlab.models.token_nll import token_nll


@torch.no_grad()
def perplexity(lm, skip, batches, autocast: bool = False, **variant) -> tuple[float, float]:
    """(perplexity, mean capacity over the routed layers) of one variant on `batches`."""
    ppl = TokenPerplexity()
    caps = []
    with skip.variant(**variant), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for b in batches:
            with skip.context(valid=b.get("valid")):
                h = lm.hidden_states(b["ids"], valid=b.get("valid"))
            ppl.update(*token_nll(lm.logits_of, h, b["labels"], lm.vocab_size))
            caps.append(float(skip.capacity()))
    return float(ppl.compute()), sum(caps) / len(caps)


def evaluate_routed_lm(
    lm, skip, test_batches, calibration_batches, prompts, eval_cfg, drop_candidates: str = "all", autocast: bool = False
) -> dict:
    """Flat metrics dict (`test/...`). `skip` may route no layer (a pretrained base alone)."""
    m: dict = {}
    m["test/ppl_base"], _ = perplexity(lm, skip, test_batches, autocast, routers=False)
    variants = {"base": {"routers": False}}
    if skip.layers:
        m["test/ppl"], m["test/capacity"] = perplexity(lm, skip, test_batches, autocast)
        m["test/ppl_increase"] = m["test/ppl"] / m["test/ppl_base"] - 1
        # the static baseline skips as many attention executions: (1 - capacity) of the routed layers
        n_drop = round((1 - m["test/capacity"]) * len(skip.layers))
        similarity = attention_similarity(lm, skip, calibration_batches)
        candidates = [
            i for i in (range(lm.n_layer) if drop_candidates == "all" else skip.layers) if i not in skip.always_runs
        ]
        dropped = layers_to_drop(similarity, n_drop, candidates)
        m["test/static_drop_layers"] = ",".join(map(str, dropped)) or "-"
        m["test/skipped_attention_per_seq"] = (1 - m["test/capacity"]) * len(skip.layers)
        m["test/static_drop_skipped_per_seq"] = len(dropped)
        m["test/ppl_static_drop"], _ = perplexity(lm, skip, test_batches, autocast, routers=False, closed=dropped)
        m["test/ppl_static_drop_increase"] = m["test/ppl_static_drop"] / m["test/ppl_base"] - 1
        for i, s in enumerate(similarity):
            m[f"calib/attn_cos_layer{i}"] = s
        variants["routed"] = {"routers": True}
        variants["static_drop"] = {"routers": False, "closed": dropped}
    else:
        m["test/ppl"], m["test/capacity"] = m["test/ppl_base"], 1.0
    if prompts:
        speed = measure_speed(lm, skip, prompts, eval_cfg.speed_new_tokens, variants, eval_cfg.speed_repeats, autocast)
        base = speed["base"]
        m["speed/threads"] = torch.get_num_threads()
        for name, r in speed.items():
            m[f"speed/{name}_prefill_tok_s"] = r["prefill_tok_s"]
            m[f"speed/{name}_decode_tok_s"] = r["decode_tok_s"]
            if name != "base":
                m[f"speed/{name}_decode_speedup"] = r["decode_tok_s"] / base["decode_tok_s"]
                m[f"speed/{name}_decode_speedup_flops"] = base["decode_flops"] / r["decode_flops"]
                m[f"speed/{name}_prefill_speedup"] = r["prefill_tok_s"] / base["prefill_tok_s"]
                m[f"speed/{name}_prefill_speedup_flops"] = base["prefill_flops"] / r["prefill_flops"]
    return m
