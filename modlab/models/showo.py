"""Show-o-like unified model: one transformer over text + image codes with omni-attention.

Training objectives (docs/data.md):
- T2I: masked-token prediction on image codes. Per row t ~ U(0, 1), mask ratio cos(pi t / 2),
  loss on the masked positions only. Captions are dropped (made invisible) with probability
  `cond_dropout` so the same model also learns the unconditional distribution for CFG.
- MMU and LM: next-token prediction on text (labels are prepared by the data rows).
Sampling: MaskGIT iterative unmasking with a cosine schedule and optional classifier-free
guidance for T2I; greedy decoding for MMU answers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from modlab.data.tokens import TASK_ID
from modlab.models.omni_attention import omni_attention_mask
from modlab.models.unified_model import UnifiedModel, drop_captions


class ShowO(UnifiedModel):
    def attention_mask(self, is_image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return omni_attention_mask(is_image, valid)

    # ---- training -------------------------------------------------------------------------

    def training_batch(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """The batch with this model's training targets in place (Show-o: masked image tokens)."""
        return self.mask_images(batch, cond_dropout, generator)

    def mask_images(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """Mask image tokens of the T2I rows (cosine schedule) and drop captions for CFG."""
        ids, labels = batch["ids"].clone(), batch["labels"].clone()
        B, T = ids.shape
        t2i_rows = batch["task"] == TASK_ID["t2i"]
        target = batch["is_image"] & t2i_rows[:, None]
        n_img = target.sum(1)
        dev = ids.device
        t = torch.rand(B, generator=generator, device=dev)
        n_mask = torch.ceil(torch.cos(math.pi * t / 2) * n_img).clamp(min=1).long()
        # rank image positions by a random key; the n_mask lowest are masked
        key = torch.rand(B, T, generator=generator, device=dev).masked_fill(~target, 2.0)
        rank = key.argsort(1).argsort(1)
        masked = target & (rank < n_mask[:, None])
        labels[masked] = ids[masked]
        ids[masked] = self.space.mask
        return {**batch, "ids": ids, "labels": labels, "valid": drop_captions(batch, cond_dropout, generator)}

    # ---- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def sample_images(
        self,
        prompts: dict,
        steps: int = 12,
        guidance: float = 0.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """MaskGIT: start from all-[MASK] image tokens, unmask the most confident predictions
        over `steps` steps so that cos(pi/2 * s/steps) of them remain masked after step s.
        Returns image codes (B, n_image_tokens) in [0, n_image_codes)."""
        sp = self.space
        ids, is_image, valid, task = prompts["ids"].clone(), prompts["is_image"], prompts["valid"], prompts["task"]
        B = ids.shape[0]
        img_idx = is_image.nonzero()[:, 1].view(B, -1)  # (B, n) image positions per row
        n = img_idx.shape[1]
        lo, hi = sp.image_offset, sp.image_offset + sp.n_image_codes
        uncond_valid = valid & ~prompts["cond"]
        for s in range(steps):
            logits = self(ids, is_image, valid, task)
            if guidance > 0:
                uncond = self(ids, is_image, uncond_valid, task)
                logits = (1 + guidance) * logits - guidance * uncond
            logits = torch.gather(logits[..., lo:hi].float(), 1, img_idx[..., None].expand(-1, -1, hi - lo))
            probs = F.softmax(logits / max(temperature, 1e-6), dim=-1)
            sampled = torch.multinomial(probs.view(-1, hi - lo), 1, generator=generator).view(B, n)
            conf = torch.gather(probs, -1, sampled[..., None]).squeeze(-1).log()
            current = torch.gather(ids, 1, img_idx)
            unknown = current == sp.mask
            # annealed Gumbel noise on the confidence (as in MaskGIT / Show-o) keeps early steps diverse
            ratio = (s + 1) / steps
            u = torch.rand(B, n, generator=generator, device=ids.device).clamp_(1e-9, 1 - 1e-9)
            conf = conf + temperature * (1 - ratio) * -torch.log(-torch.log(u))
            conf = conf.masked_fill(~unknown, float("inf"))
            n_keep_masked = math.floor(n * math.cos(math.pi / 2 * ratio))
            new = torch.where(unknown, sampled + lo, current)
            if n_keep_masked > 0:
                lowest = conf.argsort(1)[:, :n_keep_masked]
                new.scatter_(1, lowest, sp.mask)
            ids.scatter_(1, img_idx, new)
        return torch.gather(ids, 1, img_idx) - lo
