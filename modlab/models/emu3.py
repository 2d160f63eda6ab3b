"""Emu3-like unified model: the same token space as Show-o-like, pure causal next-token
prediction for both modalities, autoregressive image generation.

What differs from ShowO (both share modlab.models.unified_model: embeddings, task losses, MMU answers):
- attention is plainly causal: image tokens see only earlier image tokens;
- the T2I objective is next-token prediction of the image codes and [EOI] after the caption
  (no masking); captions are still dropped at random so classifier-free guidance works;
- T2I sampling is autoregressive, one image token per step, raster order. Routed layers route by
  their causal decision (threshold) while generating, as for MMU answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modlab.data.tokens import IGNORE_INDEX, TASK_ID
from modlab.models.omni_attention import causal_mask
from modlab.models.unified_model import UnifiedModel, drop_captions
from modlab.routing.install import threshold_routing


class Emu3(UnifiedModel):
    def attention_mask(self, is_image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return causal_mask(valid)

    def training_batch(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """T2I rows get next-token labels on the image codes and [EOI] (position i predicts
        ids[i + 1], from [SOI] on); MMU / LM rows already carry next-token labels."""
        labels = batch["labels"].clone()
        t2i_rows = batch["task"] == TASK_ID["t2i"]
        predicts_image = torch.zeros_like(batch["is_image"])
        predicts_image[:, :-1] = batch["is_image"][:, 1:]  # the [SOI] and image positions before the last
        last_image = batch["is_image"] & ~F.pad(batch["is_image"][:, 1:], (0, 1), value=False)
        target = (predicts_image | last_image) & t2i_rows[:, None]  # ... and the last predicts [EOI]
        nxt = F.pad(batch["ids"][:, 1:], (0, 1), value=IGNORE_INDEX)
        labels[target] = nxt[target]
        return {**batch, "labels": labels, "valid": drop_captions(batch, cond_dropout, generator)}

    @torch.no_grad()
    def sample_images(
        self,
        prompts: dict,
        steps: int = 0,
        guidance: float = 0.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Autoregressive sampling of the image codes, one token per step in raster order, each
        from the logits at the previous position (restricted to image codes), with optional
        classifier-free guidance. `steps` is ignored (one step per token); the signature matches
        ShowO.sample_images. The prompt rows hold placeholders at the image positions; the mask
        is causal, so each step runs only the prefix up to the token being predicted."""
        sp = self.space
        ids, is_image, valid, task = prompts["ids"].clone(), prompts["is_image"], prompts["valid"], prompts["task"]
        B = ids.shape[0]
        img_idx = is_image.nonzero()[:, 1].view(B, -1)  # (B, n) image positions per row
        rows = torch.arange(B, device=ids.device)
        lo, hi = sp.image_offset, sp.image_offset + sp.n_image_codes
        uncond_valid = valid & ~prompts["cond"]
        with threshold_routing(self):
            for j in range(img_idx.shape[1]):
                p = img_idx[:, j]  # the j-th image token of each row (captions differ in length)
                end = int(p.max())  # rows whose image starts earlier see placeholders after p: causal
                logits = self(ids[:, :end], is_image[:, :end], valid[:, :end], task)[rows, p - 1, lo:hi].float()
                if guidance > 0:
                    uncond = self(ids[:, :end], is_image[:, :end], uncond_valid[:, :end], task)[
                        rows, p - 1, lo:hi
                    ].float()
                    logits = (1 + guidance) * logits - guidance * uncond
                probs = F.softmax(logits / max(temperature, 1e-6), dim=-1)
                ids[rows, p] = torch.multinomial(probs, 1, generator=generator)[:, 0] + lo
        return torch.gather(ids, 1, img_idx) - lo
