"""The paper's baseline: static attention drop (LLM-Drop, He et al. 2024, "What matters in
transformers? Not all attention is needed").

Each attention sublayer is scored on calibration data by how little it changes the residual
stream, cos(x, x + Attn(LN(x))) averaged over tokens; the n sublayers with the highest
similarity are removed for every input. Compared with MindSkip at the same number of skipped
attention executions. The score is the analysis' LLM-Drop importance (one implementation:
modlab.analysis.importance.llm_drop_importance), similarity = 1 - importance.
"""

from __future__ import annotations

import torch

from modlab.analysis.importance import llm_drop_importance
from modlab.analysis.subject import lm_subject


@torch.no_grad()
def attention_similarity(lm, skip, batches, advance=None) -> list[float]:
    """Per layer, the mean over valid calibration tokens of cos(x, x + Attn(LN(x))), with the
    base model (every attention runs). `batches`: dicts with `ids` and optionally `valid`;
    `advance` is called after each batch."""
    with skip.variant(routers=False):
        rows = llm_drop_importance(lm_subject(lm), {"lm": list(batches)}, advance)
    return [1.0 - r["importance"] for r in rows if r["sublayer"] == "attn"]


def layers_to_drop(similarity: list[float], n: int, candidates: list[int]) -> list[int]:
    """The n candidate layers whose attention changes the stream least (highest cosine)."""
    ranked = sorted(candidates, key=lambda i: similarity[i], reverse=True)
    return sorted(ranked[:n])
