"""Show-o's omni-attention mask.

Text is causal; image tokens of a row see each other in both directions (and, being after the
text in T2I, all of the caption). In MMU the image comes first, so every later text query sees
the whole image prefix through the causal part. One rule covers all three row formats:

    allowed[i, j] = valid[j] and (j <= i or (is_image[i] and is_image[j]))   and allowed[i, i]

The diagonal is always allowed so that padding queries never see an empty row (NaN softmax).
"""

from __future__ import annotations

import torch


def omni_attention_mask(is_image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T) booleans -> (B, 1, T, T) boolean mask, True where query i may attend to key j."""
    T = is_image.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=is_image.device).tril()
    image_pair = is_image[:, :, None] & is_image[:, None, :]
    allowed = (causal | image_pair) & valid[:, None, :]
    allowed |= torch.eye(T, dtype=torch.bool, device=is_image.device)
    return allowed[:, None]


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """Plain causal mask over valid keys (Emu3-like and LM rows)."""
    return omni_attention_mask(torch.zeros_like(valid), valid)
