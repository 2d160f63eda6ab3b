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
        masked = mask_image_codes(batch, self.space.mask, generator)
        return {**masked, "valid": drop_captions(batch, cond_dropout, generator)}

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
        valid, task = prompts["valid"], prompts["task"]
        uncond_valid = valid & ~prompts["cond"]

        def logits_fn(ids):
            logits = self(ids, prompts["is_image"], valid, task)
            if guidance > 0:
                uncond = self(ids, prompts["is_image"], uncond_valid, task)
                logits = (1 + guidance) * logits - guidance * uncond
            return logits

        return maskgit_loop(
            logits_fn, prompts["ids"], prompts["is_image"], sp.image_offset, sp.n_image_codes, sp.mask, steps,
            temperature, generator,
        )  # fmt: skip


def mask_image_codes(
    batch: dict, mask_id: int, generator: torch.Generator | None = None, rounding: str = "ceil"
) -> dict:
    """Mask the image codes of the batch's T2I rows: per row t ~ U(0, 1), n = rounding(cos(pi t / 2)
    * n_image) codes (at least one), chosen uniformly; their ids become `mask_id` and their labels
    the original codes (labels elsewhere are left as they are). `rounding`: "ceil" (modlab's own
    model) or "round" (Show-o's mask_or_random_replace_tokens)."""
    ids, labels = batch["ids"].clone(), batch["labels"].clone()
    B, T = ids.shape
    t2i_rows = batch["task"] == TASK_ID["t2i"]
    target = batch["is_image"] & t2i_rows[:, None]
    n_img = target.sum(1)
    dev = ids.device
    t = torch.rand(B, generator=generator, device=dev)
    count = torch.ceil if rounding == "ceil" else torch.round
    n_mask = count(torch.cos(math.pi * t / 2) * n_img).clamp(min=1).long()
    # rank image positions by a random key; the n_mask lowest are masked
    key = torch.rand(B, T, generator=generator, device=dev).masked_fill(~target, 2.0)
    rank = key.argsort(1).argsort(1)
    masked = target & (rank < n_mask[:, None])
    labels[masked] = ids[masked]
    ids[masked] = mask_id
    return {**batch, "ids": ids, "labels": labels}


@torch.no_grad()
def maskgit_loop(
    logits_fn,
    ids: torch.Tensor,
    is_image: torch.Tensor,
    code_offset: int,
    n_codes: int,
    mask_id: int,
    steps: int,
    temperature: float,
    generator: torch.Generator | None,
    released_showo: bool = False,
) -> torch.Tensor:
    """MaskGIT: the image positions (the same number in every row) start as `mask_id`; each step
    samples a code for every masked position from `logits_fn(ids)` (B, T, vocab; guidance already
    applied) and re-masks the least confident samples so that floor(n cos(pi/2 * s/steps)) stay
    masked after step s; the confidence is the sample's log-probability plus annealed Gumbel noise
    (keeps early steps diverse). Returns the codes (B, n) in [0, n_codes).

    Two variants of the details: modlab's own model (samples drawn at `temperature`, noise scale
    temperature * (1 - s/steps)) and, with `released_showo`, Show-o's t2i_generate (samples drawn
    at temperature 1; the noise scale is multiplied by (1 - s/steps) again at every step, as its
    loop reassigns `temperature`; at least one token is unmasked and one kept masked per step, and
    the result is the last step's samples)."""
    ids = ids.clone()
    B = ids.shape[0]
    img_idx = is_image.nonzero()[:, 1].view(B, -1)  # (B, n) image positions per row
    n = img_idx.shape[1]
    lo, hi = code_offset, code_offset + n_codes
    noise = temperature
    for s in range(steps):
        logits = torch.gather(logits_fn(ids)[..., lo:hi].float(), 1, img_idx[..., None].expand(-1, -1, n_codes))
        probs = F.softmax(logits if released_showo else logits / max(temperature, 1e-6), dim=-1)
        sampled = torch.multinomial(probs.view(-1, n_codes), 1, generator=generator).view(B, n)
        conf = torch.gather(probs, -1, sampled[..., None]).squeeze(-1)
        conf = conf.clamp_min(1e-20).log() if released_showo else conf.log()  # Show-o's log() clamps
        current = torch.gather(ids, 1, img_idx)
        unknown = current == mask_id
        ratio = (s + 1) / steps
        noise = noise * (1 - ratio) if released_showo else temperature * (1 - ratio)
        u = torch.rand(B, n, generator=generator, device=ids.device).clamp_(1e-9, 1 - 1e-9)
        conf = (conf + noise * -torch.log(-torch.log(u))).masked_fill(~unknown, float("inf"))
        n_keep = torch.full((B,), math.floor(n * math.cos(math.pi / 2 * ratio)), device=ids.device)
        if released_showo:
            n_keep = torch.maximum(torch.ones_like(n_keep), torch.minimum(unknown.sum(1) - 1, n_keep))
        new = torch.where(unknown, sampled + lo, current)
        if s == steps - 1:  # the last step's samples are the image (Show-o returns them as they are)
            return new - lo
        remask = conf.argsort(1).argsort(1) < n_keep[:, None]  # the n_keep least confident
        ids.scatter_(1, img_idx, new.masked_fill(remask, mask_id))
    return torch.gather(ids, 1, img_idx) - lo
