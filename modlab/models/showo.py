"""Show-o-like unified model: one transformer over text + image codes with omni-attention.

Training objectives (DESIGN.md):
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
import torch.nn as nn
import torch.nn.functional as F

from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TASKS, TEXT_VOCAB, TokenSpace
from modlab.models.config import ModelConfig
from modlab.models.omni_attention import omni_attention_mask
from modlab.models.transformer import Transformer
from modlab.routing.install import RouteInfo, threshold_routing


def drop_captions(batch: dict, cond_dropout: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """`valid` with the captions of a random `cond_dropout` share of T2I rows made invisible, so
    the model also learns the unconditional distribution (classifier-free guidance)."""
    valid = batch["valid"].clone()
    if cond_dropout > 0:
        t2i_rows = batch["task"] == TASK_ID["t2i"]
        drop = (torch.rand(len(valid), generator=generator, device=valid.device) < cond_dropout) & t2i_rows
        valid &= ~(batch["cond"] & drop[:, None])
    return valid


class ShowO(nn.Module):
    def __init__(self, cfg: ModelConfig, space: TokenSpace, n_image_tokens: int):
        super().__init__()
        self.cfg, self.space = cfg, space
        self.transformer = Transformer(cfg, space.vocab_size)
        # RoPE gives only 1-D offsets; a learned embedding of each image token's place in the
        # image (its raster index) tells the model where a pixel / patch sits in 2-D.
        self.image_pos = nn.Embedding(n_image_tokens, cfg.d_model)
        nn.init.normal_(self.image_pos.weight, std=0.02)

    def forward(
        self, ids: torch.Tensor, is_image: torch.Tensor, valid: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, vocab). `task` (B,) task ids are needed only by routed layers."""
        raster = (is_image.long().cumsum(1) - 1).clamp(0, self.image_pos.num_embeddings - 1)
        extra = self.image_pos(raster) * is_image[..., None]
        if task is None:
            task = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        route = RouteInfo(task=task, valid=valid)
        return self.transformer(ids, self.attention_mask(is_image, valid), extra_embed=extra, route=route)

    def attention_mask(self, is_image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return omni_attention_mask(is_image, valid)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

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

    def task_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the labelled tokens of each task present in the batch."""
        logits = self(batch["ids"], batch["is_image"], batch["valid"], batch["task"])
        ce = F.cross_entropy(
            logits.float().transpose(1, 2), batch["labels"], ignore_index=IGNORE_INDEX, reduction="none"
        )
        has_label = batch["labels"] != IGNORE_INDEX
        out = {}
        for name in TASKS:
            rows = batch["task"] == TASK_ID[name]
            sel = has_label & rows[:, None]
            if sel.any():
                out[name] = ce[sel].mean()
        return out

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

    @torch.no_grad()
    def answer(self, prompts: dict, max_new_tokens: int = 16) -> list[str]:
        """Greedy decoding of MMU answers. All prompts must have the same length (one question
        template), so rows stay aligned without padding in between. Routed layers route by their
        causal decision (threshold), as a token-by-token decoder must: top-k would let tokens
        generated later change how the prompt was processed."""
        sp = self.space
        ids, is_image, valid = prompts["ids"], prompts["is_image"], prompts["valid"]
        if not bool(valid.all()):
            raise ValueError("answer() needs unpadded prompts of equal length")
        allowed = torch.zeros(sp.vocab_size, dtype=torch.bool, device=ids.device)
        allowed[:TEXT_VOCAB] = True
        allowed[sp.eos] = True
        start = ids.shape[1]
        with threshold_routing(self):
            for _ in range(max_new_tokens):
                logits = self(ids, is_image, valid, prompts["task"])[:, -1].float().masked_fill(~allowed, float("-inf"))
                nxt = logits.argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
                is_image = torch.cat([is_image, torch.zeros_like(nxt, dtype=torch.bool)], 1)
                valid = torch.cat([valid, torch.ones_like(nxt, dtype=torch.bool)], 1)
                if bool((ids[:, start:] == sp.eos).any(1).all()):
                    break
        return [sp.decode_text(row) for row in ids[:, start:].tolist()]
