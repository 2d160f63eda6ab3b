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
from modlab.progress import ProgressLines


@torch.no_grad()
def perplexity(lm, skip, batches, autocast: bool = False, advance=None, **variant) -> tuple[float, float]:
    """(perplexity, capacity) of one variant on `batches`: the mean gate over the routed layers,
    each batch weighted by what its gates count (rows; tokens with token granularity)."""
    ppl = TokenPerplexity()
    gates = weight = 0.0
    with skip.variant(**variant), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for b in batches:
            valid = b.get("valid")
            with skip.context(valid=valid):
                h = lm.hidden_states(b["ids"], valid=valid)
            ppl.update(*token_nll(lm.logits_of, h, b["labels"], lm.vocab_size))
            w = float(skip.capacity_weight(valid if valid is not None else torch.ones_like(b["ids"], dtype=torch.bool)))
            gates, weight = gates + float(skip.capacity()) * w, weight + w
            if advance:
                advance()
    return float(ppl.compute()), gates / weight


def evaluate_routed_lm(
    lm, skip, test_batches, calibration_batches, prompts, eval_cfg, drop_candidates: str = "all", autocast: bool = False
) -> dict:
    """Flat metrics dict (`test/...`). `skip` may route no layer (a pretrained base alone).
    Each stage prints progress lines (modlab.progress): a real model's evaluation takes minutes."""
    lines = ProgressLines()

    def ppl_of(name: str, **variant) -> tuple[float, float]:
        return perplexity(
            lm, skip, test_batches, autocast, lines.stage(f"test perplexity, {name}", len(test_batches)), **variant
        )

    def similarity_of() -> list[float]:
        return attention_similarity(
            lm, skip, calibration_batches, lines.stage("LLM-Drop scores", len(calibration_batches))
        )

    m: dict = {}
    m["test/ppl_base"], _ = ppl_of("base", routers=False)
    variants = {"base": {"routers": False}}
    similarity = None
    if skip.layers:
        m["test/ppl"], m["test/capacity"] = ppl_of("routed")
        m["test/ppl_increase"] = m["test/ppl"] / m["test/ppl_base"] - 1
        # the static baseline skips as many attention executions: (1 - capacity) of the routed layers
        n_drop = round((1 - m["test/capacity"]) * len(skip.layers))
        similarity = similarity_of()
        candidates = [
            i for i in (range(lm.n_layer) if drop_candidates == "all" else skip.layers) if i not in skip.always_runs
        ]
        dropped = layers_to_drop(similarity, n_drop, candidates)
        m["test/static_drop_layers"] = ",".join(map(str, dropped)) or "-"
        m["test/skipped_attention_per_seq"] = (1 - m["test/capacity"]) * len(skip.layers)
        m["test/static_drop_skipped_per_seq"] = len(dropped)
        m["test/ppl_static_drop"], _ = ppl_of("static drop", routers=False, closed=dropped)
        m["test/ppl_static_drop_increase"] = m["test/ppl_static_drop"] / m["test/ppl_base"] - 1
        for i, s in enumerate(similarity):
            m[f"calib/attn_cos_layer{i}"] = s
        variants["routed"] = {"routers": True}
        variants["static_drop"] = {"routers": False, "closed": dropped}
    else:
        m["test/ppl"], m["test/capacity"] = m["test/ppl_base"], 1.0
    counts = list(getattr(eval_cfg, "static_drop_counts", []) or [])
    if counts:  # the static baselines at fixed numbers of dropped attention layers (a Pareto curve)
        similarity = similarity if similarity is not None else similarity_of()
        candidates = [i for i in range(lm.n_layer) if i not in skip.always_runs]
        for n in counts:
            dropped = layers_to_drop(similarity, n, candidates)
            m[f"test/static_drop_{n}_layers"] = ",".join(map(str, dropped))
            m[f"test/ppl_static_drop_{n}"], _ = ppl_of(f"static drop of {n}", routers=False, closed=dropped)
    if prompts:
        r = eval_cfg.speed_repeats
        advance = lines.stage("speed (prompts generated)", (r + 1) * len(variants) * len(prompts))
        speed = measure_speed(lm, skip, prompts, eval_cfg.speed_new_tokens, variants, r, autocast, advance)
        base = speed["base"]
        m["speed/threads"] = torch.get_num_threads()
        for name, v in speed.items():
            m[f"speed/{name}_prefill_tok_s"] = v["prefill_tok_s"]
            m[f"speed/{name}_decode_tok_s"] = v["decode_tok_s"]
            if name != "base":
                m[f"speed/{name}_decode_speedup"] = v["decode_tok_s"] / base["decode_tok_s"]
                m[f"speed/{name}_decode_speedup_flops"] = base["decode_flops"] / v["decode_flops"]
                m[f"speed/{name}_prefill_speedup"] = v["prefill_tok_s"] / base["prefill_tok_s"]
                m[f"speed/{name}_prefill_speedup_flops"] = base["prefill_flops"] / v["prefill_flops"]
    return m
