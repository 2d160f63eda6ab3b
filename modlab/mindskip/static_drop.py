"""The paper's baseline: static attention drop (LLM-Drop, He et al. 2024, "What matters in
transformers? Not all attention is needed").

Each attention sublayer is scored on calibration data by how little it changes the residual
stream, cos(x, x + Attn(LN(x))) averaged over tokens; the n sublayers with the highest
similarity are removed for every input. Compared with MindSkip at the same number of skipped
attention executions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def attention_similarity(lm, skip, batches) -> list[float]:
    """Per layer, the mean over valid calibration tokens of cos(x, x + Attn(LN(x))), with the
    base model (every attention runs). `batches`: dicts with `ids` and optionally `valid`."""
    inputs: dict[int, torch.Tensor] = {}
    sums, count = [0.0] * lm.n_layer, [0] * lm.n_layer
    valid_now: list[torch.Tensor | None] = [None]

    def keep_input(i):
        def hook(module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def score(i):
        def hook(module, args, output):
            x = inputs.pop(i).float()
            a = (output[0] if isinstance(output, tuple) else output).float()
            cos = F.cosine_similarity(x, x + a, dim=-1)  # (B, T)
            v = valid_now[0]
            sums[i] += float(cos.sum() if v is None else cos[v].sum())
            count[i] += cos.numel() if v is None else int(v.sum())
        return hook

    handles = [layer.register_forward_pre_hook(keep_input(i), with_kwargs=True) for i, layer in enumerate(lm.decoder_layers())]
    handles += [g.register_forward_hook(score(i)) for i, g in enumerate(skip.gates)]
    try:
        with skip.variant(routers=False):
            for batch in batches:
                valid_now[0] = batch.get("valid")
                with skip.context(valid=valid_now[0]):
                    lm(batch["ids"], valid=valid_now[0])
    finally:
        for h in handles:
            h.remove()
    return [s / max(c, 1) for s, c in zip(sums, count)]


def layers_to_drop(similarity: list[float], n: int, candidates: list[int]) -> list[int]:
    """The n candidate layers whose attention changes the stream least (highest cosine)."""
    ranked = sorted(candidates, key=lambda i: similarity[i], reverse=True)
    return sorted(ranked[:n])
