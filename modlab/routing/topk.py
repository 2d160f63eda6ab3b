"""Expert-choice top-k selection per row over the eligible (valid, routed-task) tokens."""

from __future__ import annotations

import torch


def tokens_to_keep(capacity: torch.Tensor, n_eligible: torch.Tensor) -> torch.Tensor:
    """k = ceil(C * n) per row, at least 1 where a row has any eligible token.

    The tiny epsilon stops float error from rounding e.g. 0.2 * 65 = 13.000000000000002 up to 14."""
    k = torch.ceil(capacity * n_eligible - 1e-6).long()
    return torch.minimum(k.clamp(min=1), n_eligible) * (n_eligible > 0)


def topk_select(
    scores: torch.Tensor, eligible: torch.Tensor, capacity: torch.Tensor, forced: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the k = ceil(C * n_eligible) highest-scoring eligible tokens of each row.

    scores (B, T) router logits; eligible (B, T) bool; capacity: a scalar or (B,) per-row capacity.
    `forced` (B, T): eligible tokens that are not routed but always run (e.g. the text of a row
    when only image tokens are routed); the capacity applies to the other eligible tokens, so a
    row keeps ceil(C * n_routed) of those plus every forced one.
    Returns `idx` (B, K) token indices sorted ascending (causal order is kept) and `slot_ok`
    (B, K) marking the slots that hold a selected token (rows keep different k; K = max k).
    Unused slots point at index 0 and must be ignored (they carry slot_ok = False)."""
    B, T = scores.shape
    capacity = torch.as_tensor(capacity, dtype=torch.float32, device=scores.device).expand(B)
    ranked_scores = scores.float()
    if forced is not None:
        forced = forced & eligible
        n_forced = forced.sum(1)
        k = tokens_to_keep(capacity, eligible.sum(1) - n_forced) + n_forced
        ranked_scores = ranked_scores.masked_fill(forced, float("inf"))
    else:
        k = tokens_to_keep(capacity, eligible.sum(1))
    K = int(k.max()) if B else 0
    # a stable descending sort: equal scores (repeated tokens' embeddings at layer 0) go to the
    # earlier token, so a row keeps the same tokens alone or in any batch (topk breaks ties arbitrarily)
    ranked_scores = ranked_scores.masked_fill(~eligible, float("-inf"))
    ranked = ranked_scores.sort(dim=1, descending=True, stable=True).indices[:, :K]  # (B, K)
    slot_ok = torch.arange(K, device=scores.device)[None] < k[:, None]
    # sort chosen indices; unused slots get the sentinel T so they sort last
    idx = torch.where(slot_ok, ranked, T).sort(1).values
    slot_ok = idx < T
    return idx.masked_fill(~slot_ok, 0), slot_ok
