"""What every unified (text + image) model offers to training, sampling and evaluation.

Both kinds of unified model satisfy it: modlab's own (`modlab.models.unified_model.UnifiedModel`:
Show-o-like, Emu3-like; rows in modlab's token space) and the Hugging Face ones
(`modlab.models.hf_unified.base.HFUnifiedModel`: Emu3, Chameleon, Janus, Show-o on Phi; rows in
each model's own format, images through its VQ codec). Callers (`modlab generate`'s sampling,
the test loop, the FLOPs probe) use these methods alone and never ask which kind they hold: a
difference between the kinds (row formats, padding side, how codes become pixels) lives in the
model's method.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class UnifiedModelProtocol(Protocol):
    image_vmax: float  # the pixel value of white in decode_images' grey images (RGB ones are in [0, 1])

    # ---- losses and batches ---------------------------------------------------------------------

    def training_batch(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """The batch as a training step sees it (targets in place, a `cond_dropout` share of T2I
        captions dropped for classifier-free guidance)."""
        ...

    def task_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the labelled tokens of each task in the batch ("t2i", "mmu",
        "lm"), plus the model's own extras (e.g. "mindskip_capacity" under Router-Tuning)."""
        ...

    # ---- prompts ---------------------------------------------------------------------------------

    def t2i_prompts(self, captions: list[str]) -> dict:
        """One batch of T2I prompts, one row per caption, in the layout sample_images continues."""
        ...

    def mmu_prompts(self, codes: torch.Tensor, labels, images: np.ndarray) -> dict:
        """One batch of MMU prompts asking what digit each image shows: `codes` (N, ...) its image
        tokenizer's codes, `labels` the digits, `images` the raw digit images (models that read
        pixels see those)."""
        ...

    # ---- answers and images ----------------------------------------------------------------------

    def answer(self, prompts: dict, max_new_tokens: int = 16) -> list[str]:
        """Greedy text answers to MMU prompt rows (routed layers by their causal decision)."""
        ...

    def sample_images(
        self,
        prompts: dict,
        steps: int = 12,
        guidance: float = 0.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Image codes (B, n_codes) drawn for T2I prompt rows."""
        ...

    def decode_images(self, codes: torch.Tensor, image_tokenizer) -> torch.Tensor | None:
        """Images (N, H, W) grey in [0, image_vmax] or (N, H, W, 3) RGB in [0, 1] of drawn codes
        (N, n_codes); `image_tokenizer` is the module's (what a native model's codes index). None
        when the model cannot turn codes into pixels (Chameleon's VQ has no decoder in transformers)."""
        ...
