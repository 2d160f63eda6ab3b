"""What the unified (text + image) models share: one transformer over text and image codes (a
learned 2-D image position on top of RoPE), per-task losses, and greedy MMU answers.

A subclass says how it attends (`attention_mask`), what it learns of the images
(`training_batch`: the targets of its T2I rows) and how it draws them (`sample_images`):
Show-o-like (modlab.models.showo: omni-attention, masked image tokens, MaskGIT) and Emu3-like
(modlab.models.emu3: causal attention, next-token image codes, autoregressive sampling).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.data.rows import MMUPrompts, collate_rows, t2i_row
from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TASKS, TEXT_VOCAB, TokenSpace
from modlab.models.config import ModelConfig
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


def per_task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, task: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over the labelled tokens of each task present in the batch (labels[i] is
    what position i predicts; IGNORE_INDEX elsewhere). Shared with modlab.models.hf_unified.showo_phi."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    has_label = labels != IGNORE_INDEX
    out = {}
    for name in TASKS:
        sel = has_label & (task == TASK_ID[name])[:, None]
        if sel.any():
            out[name] = ce[sel].mean()
    return out


class UnifiedModel(nn.Module):
    """A modlab unified model; it offers what modlab.models.unified_protocol states."""

    image_vmax = 16.0  # the digits' grey levels, as the image tokenizers decode them

    def __init__(self, cfg: ModelConfig, space: TokenSpace, n_image_tokens: int):
        super().__init__()
        self.cfg, self.space, self.n_image_tokens = cfg, space, n_image_tokens
        self.transformer = Transformer(cfg, space.vocab_size)
        # RoPE gives only 1-D offsets; a learned embedding of each image token's place in the
        # image (its raster index) tells the model where a pixel / patch sits in 2-D.
        self.image_pos = nn.Embedding(n_image_tokens, cfg.d_model)
        nn.init.normal_(self.image_pos.weight, std=0.02)

    def forward(
        self, ids: torch.Tensor, is_image: torch.Tensor, valid: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, vocab). `task` (B,) task ids are needed only by routed layers."""
        if task is None:
            task = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        route = RouteInfo(task=task, valid=valid)
        mask = self.attention_mask(is_image, valid)
        return self.transformer(ids, mask, extra_embed=self.image_embed(is_image), route=route)

    def image_embed(self, is_image: torch.Tensor) -> torch.Tensor:
        """(B, T, d): each image token's learned place in the image (its raster index, counted
        from the row's first image token); zero for text."""
        raster = (is_image.long().cumsum(1) - 1).clamp(0, self.image_pos.num_embeddings - 1)
        return self.image_pos(raster) * is_image[..., None]

    def attention_mask(self, is_image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T) boolean mask: which keys each query may see (the family's attention rule)."""
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- training -------------------------------------------------------------------------

    def training_batch(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """The batch with this model's training targets in place (labels of its T2I rows)."""
        raise NotImplementedError

    def task_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the labelled tokens of each task present in the batch."""
        logits = self(batch["ids"], batch["is_image"], batch["valid"], batch["task"])
        return per_task_cross_entropy(logits, batch["labels"], batch["task"])

    # ---- prompts (rows in modlab's token space, right-padded) -------------------------------

    def t2i_prompts(self, captions: list[str]) -> dict:
        return collate_rows([t2i_row(self.space, c, None, self.n_image_tokens) for c in captions], self.space.pad)

    def mmu_prompts(self, codes: torch.Tensor, labels, images=None) -> dict:
        ds = MMUPrompts(self.space, codes, labels)
        return collate_rows([ds[i] for i in range(len(ds))], self.space.pad)

    # ---- inference ------------------------------------------------------------------------

    def decode_images(self, codes: torch.Tensor, image_tokenizer) -> torch.Tensor:
        """Grey images (N, S, S) in [0, image_vmax], through the module's image tokenizer."""
        t = image_tokenizer
        return t.decode(codes).reshape(len(codes), t.image_size, t.image_size)

    def sample_images(
        self,
        prompts: dict,
        steps: int = 12,
        guidance: float = 0.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Image codes (B, n_image_tokens) in [0, n_image_codes) for T2I prompt rows."""
        raise NotImplementedError

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
