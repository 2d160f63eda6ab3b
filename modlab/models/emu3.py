"""Emu3-like unified model: the same token space as Show-o-like, pure causal next-token
prediction for both modalities, autoregressive image generation.

What differs from ShowO (both share modlab.models.unified_model: embeddings, task losses, MMU answers):
- attention is plainly causal: image tokens see only earlier image tokens;
- the T2I objective is next-token prediction of the image codes and [EOI] after the caption
  (no masking); captions are still dropped at random so classifier-free guidance works;
- T2I sampling is autoregressive, one image token per step, raster order, with a KV cache: each
  prompt runs once, then each drawn token. Routed layers route by their causal decision
  (threshold) while generating, as for MMU answers, and a token that skips a routed layer leaves
  no K/V there (the compact cache, modlab.models.kv_cache).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from modlab.data.tokens import IGNORE_INDEX, TASK_ID
from modlab.models.kv_cache import KVCache
from modlab.models.omni_attention import causal_mask
from modlab.models.unified_model import UnifiedModel, drop_captions
from modlab.routing.install import RouteInfo, routes_causally, threshold_routing


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
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Autoregressive sampling of the image codes, one token per step in raster order, each
        from the logits at the previous position (restricted to image codes), with optional
        classifier-free guidance. `steps` is ignored (one step per token); the signature matches
        ShowO.sample_images. `use_cache=False` recomputes the whole prefix for every token (the
        oracle the KV cache is tested against); see draw_images."""

        def draw(logits: torch.Tensor) -> torch.Tensor:
            probs = F.softmax(logits / max(temperature, 1e-6), dim=-1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0]

        return self.draw_images(prompts, draw, guidance, use_cache)[0]

    @torch.no_grad()
    def draw_images(
        self, prompts: dict, draw: Callable[[torch.Tensor], torch.Tensor], guidance: float = 0.0, use_cache: bool = True
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Image codes (B, n) in [0, n_image_codes), drawn in raster order: `draw` turns each step's
        guided logits over the image codes (B, n_image_codes) into codes (B,). Returns them and
        the KV cache that produced them (rows: the prompts, then with guidance the same prompts
        without their captions), or None when recomputing.

        The prompt rows hold placeholders at the image positions (one contiguous span per row;
        captions differ in length, so rows start their images at different positions). With the
        cache each row's prompt up to its [SOI] runs once, then each drawn token runs once, at its
        own position; routed layers decide by threshold and store only the tokens that ran them.
        A model with a top-k-only routed layer (causal=none) always recomputes: top-k sees the
        whole prefix, so no token's routing, nor its cache entry, would be final."""
        sp = self.space
        ids = prompts["ids"].clone()
        B = ids.shape[0]
        img_idx = prompts["is_image"].nonzero()[:, 1].view(B, -1)  # (B, n) image positions per row
        rows = torch.arange(B, device=ids.device)
        lo, hi = sp.image_offset, sp.image_offset + sp.n_image_codes
        # the rows that run: the prompts, and with guidance the same prompts without their captions
        valids = [prompts["valid"]] + ([prompts["valid"] & ~prompts["cond"]] if guidance > 0 else [])
        with threshold_routing(self):
            cache = KVCache(self.cfg.n_layer) if use_cache and routes_causally(self) else None
            if cache is None:
                logits_for = self._recomputed_logits(ids, prompts, valids, img_idx)
            else:
                logits_for = self._cached_logits(ids, prompts, valids, img_idx, cache)
            for j in range(img_idx.shape[1]):
                logits = logits_for(j)[:, lo:hi].float().view(len(valids), B, -1)
                guided = logits[0] if guidance <= 0 else (1 + guidance) * logits[0] - guidance * logits[1]
                ids[rows, img_idx[:, j]] = draw(guided) + lo
        return torch.gather(ids, 1, img_idx) - lo, cache

    def _recomputed_logits(self, ids, prompts, valids, img_idx) -> Callable[[int], torch.Tensor]:
        """j -> the logits (len(valids) * B, vocab) that predict each row's j-th image token, from
        a forward over the whole prefix (`ids` holds the tokens drawn so far). The mask is causal,
        so the prefix up to the latest row's token suffices: rows whose image starts earlier see
        placeholders only after the position they predict from."""
        rows = torch.arange(ids.shape[0], device=ids.device)
        is_image, task = prompts["is_image"], prompts["task"]

        def logits_for(j: int) -> torch.Tensor:
            p = img_idx[:, j]
            end = int(p.max())
            return torch.cat([self(ids[:, :end], is_image[:, :end], v[:, :end], task)[rows, p - 1] for v in valids])

        return logits_for

    def _cached_logits(self, ids, prompts, valids, img_idx, cache: KVCache) -> Callable[[int], torch.Tensor]:
        """As _recomputed_logits, with the KV cache; j = 0, 1, ... in order: j = 0 prefills each
        row's prompt up to its [SOI], j > 0 runs the token drawn at step j - 1. The rows of all
        `valids` run as one batch (len(valids) * B rows, each with its own cache entries)."""
        G, (B, T) = len(valids), ids.shape
        start = img_idx[:, 0]  # each row's first image position; its [SOI] is just before
        # the prefill runs as many columns as the longest prompt: in a row with a shorter caption
        # the columns past its [SOI] (its own image placeholders) are padding, so nothing caches them
        prompt = torch.arange(T, device=ids.device)[None] < start[:, None]
        valid = torch.cat([v & prompt for v in valids])
        task, extra = prompts["task"].repeat(G), self.image_embed(prompts["is_image"]).repeat(G, 1, 1)
        rows = torch.arange(G * B, device=ids.device)

        one = torch.ones(G * B, 1, dtype=torch.bool, device=ids.device)
        step_mask = causal_mask(one)  # a decode step's mask, the same at every step: built once

        def run(tokens, positions, valid_cols, mask=None):
            """Logits of these tokens (G * B, n) at their positions (G * B, n), continuing the cache."""
            route = RouteInfo(task=task, valid=valid_cols)
            embed = extra[rows[:, None], positions]
            mask = causal_mask(valid_cols) if mask is None else mask
            return self.transformer(tokens, mask, positions, embed, route, cache)

        def logits_for(j: int) -> torch.Tensor:
            if j == 0:
                n = int(start.max())
                positions = torch.arange(n, device=ids.device).expand(G * B, n)
                return run(ids[:, :n].repeat(G, 1), positions, valid[:, :n])[rows, start.repeat(G) - 1]
            # the token drawn last, at its own position, predicts the next (the image span is contiguous)
            p = img_idx[:, j - 1 : j]
            tokens, p = ids.gather(1, p).repeat(G, 1), p.repeat(G, 1)
            return run(tokens, p, one, step_mask)[:, 0]

        return logits_for
