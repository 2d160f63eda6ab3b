"""Janus (transformers 5.x) behind modlab's unified interface (modlab.models.hf_unified.base).

Janus (JanusForConditionalGeneration; rows as JanusProcessor lays them out):
    MMU     <bos> <begin_of_image> <image_placeholder> x n <end_of_image> question " " answer <eos>
            the placeholders are the image as the understanding path sees it: the SigLIP vision
            encoder's features through the aligner (JanusModel.get_image_features), scattered
            at the placeholders (get_placeholder_mask); rows carry the processor's `pixels`
    T2I     <bos> caption <begin_of_image> codes      (the processor's image generation mode)
            the codes go through the generation path: generation_embeddings + generation_aligner
            in, generation_head out (as JanusForConditionalGeneration.generate in image mode)
    LM      <bos> text
Janus's rows use one vocabulary of V text tokens then its image codes: id V + c is code c, and
its logits are the lm_head's over the text and the generation head's over the codes, each left at
the dtype's minimum where the other head predicts (T2I rows: the image start and the codes
predict the next code), so one cross-entropy is each head's own. Janus's generate() builds a
StaticCache, which routed layers refuse; sampling here is HFUnifiedModel's loop with a
DynamicCache. Its guidance is HFUnifiedModel's too (captions made invisible, as caption dropout
trains), where Janus's own replaces the prompt's tokens by padding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from modlab.data.tokens import TASK_ID
from modlab.errors import ConfigError
from modlab.models.hf_unified.base import HFUnifiedModel, answer_row, make_row, t2i_labels


class HFJanus(HFUnifiedModel):
    """JanusForConditionalGeneration (see the module docstring for its rows)."""

    mmu_reads_pixels = True

    def __init__(self, hf, processor, codec, path, route_tokens=("image",)):
        super().__init__(hf, processor, codec, path, route_tokens)
        vision = hf.config.vision_config
        if codec.resolution != vision.image_size:
            # MMU images are the processor's pixels at the codec's resolution; the vision encoder's
            # position embeddings are fixed to its own image size
            raise ConfigError(
                f"model.resolution={codec.resolution}: Janus's vision encoder takes {vision.image_size}x"
                f"{vision.image_size} images (set model.resolution={vision.image_size} or 0)"
            )
        self.text_vocab = self.config.vocab_size
        self.register_buffer("code_to_id", self.text_vocab + torch.arange(codec.n_codes), False)
        ids = self.tokenizer.convert_tokens_to_ids
        self.boi, self.eoi = ids(processor.image_start_token), ids(processor.image_end_token)
        self.placeholder = hf.config.image_token_id
        self.n_vision_tokens = (vision.image_size // vision.patch_size) ** 2

    def extra_forward_flops(self, batch: dict) -> int:
        """The generation aligner on every image code, the generation head where a code is
        predicted (as _embed and _logits run them), and the vision encoder + aligner on each MMU
        image (measured once by FlopCounterMode: a fixed cost per image at this resolution)."""
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.routing.hf_flops import linear_weights

        m, ids = self.hf.model, batch["ids"]
        is_code = ids >= self.text_vocab
        predicts = (batch["task"] == TASK_ID["t2i"])[:, None] & (is_code | (ids == self.boi))
        flops = 2 * int(is_code.sum()) * linear_weights(m.generation_aligner)
        flops += 2 * int(predicts.sum()) * linear_weights(m.generation_head)
        if "pixels" in batch:
            flops += len(batch["pixels"]) * self.vision_flops_per_image()
        return flops

    def vision_flops_per_image(self) -> int:
        if getattr(self, "_vision_flops", None) is None:
            m, impl = self.hf.model, self.hf.config._attn_implementation
            param = next(m.vision_model.parameters())
            pixels = torch.zeros(
                1, 3, self.codec.resolution, self.codec.resolution, dtype=param.dtype, device=param.device
            )
            self.hf.set_attn_implementation("eager")  # every matmul visible to the counter (none for CPU SDPA)
            try:
                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    m.get_image_features(pixels, return_dict=True)
            finally:
                self.hf.set_attn_implementation(impl)
            self._vision_flops = int(counter.get_total_flops())
        return self._vision_flops

    def _embed(self, ids: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """The language model's inputs: text embeddings, image codes through the generation
        embeddings and aligner, the vision features at the image placeholders."""
        m = self.hf.model
        is_code = ids >= self.text_vocab
        text_ids = ids.masked_fill(is_code, self.pad)
        embeds = m.get_input_embeddings()(text_ids)
        if bool(is_code.any()):
            gen = self.hf.prepare_embeddings_for_image_generation(ids[is_code] - self.text_vocab)
            embeds = embeds.masked_scatter(is_code[..., None], gen.to(embeds.dtype))
        if pixels is not None:
            vision_dtype = next(m.vision_model.parameters()).dtype
            feats = m.get_image_features(pixels.to(embeds.device, vision_dtype), return_dict=True).pooler_output
            feats = feats.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
            embeds = embeds.masked_scatter(m.get_placeholder_mask(text_ids, embeds, feats), feats)
        return embeds

    def _logits(self, ids, mask, positions, task, cache, pixels) -> torch.Tensor:
        m = self.hf.model
        h = m.language_model(
            inputs_embeds=self._embed(ids, pixels),
            attention_mask=mask.long(),
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state
        text = self.hf.lm_head(h)
        low = torch.finfo(text.dtype).min
        # in T2I rows the image start and every code predict the next code, with the generation head
        predicts_code = (task == TASK_ID["t2i"])[:, None] & ((ids >= self.text_vocab) | (ids == self.boi))
        codes = text.new_full((*ids.shape, self.codec.n_codes), low)
        if bool(predicts_code.any()):
            codes = codes.masked_scatter(predicts_code[..., None], m.generation_head(h[predicts_code]).to(text.dtype))
        return torch.cat([text.masked_fill(predicts_code[..., None], low), codes], -1)

    def t2i_row(self, caption, codes, digit=-1) -> dict:
        text = self.text_ids(caption)
        n = self.codec.n_tokens
        img = self.code_ids(codes) if codes is not None else [self.text_vocab] * n
        ids = [self.bos, *text, self.boi, *img]
        kinds = ["special", *["caption"] * len(text), "special", *["image"] * n]
        labels = t2i_labels(ids, 1 + len(text))  # the codes (the last predicts nothing)
        return make_row(ids, labels, kinds, [k == "caption" for k in kinds], "t2i", digit)

    def mmu_row(self, codes, question, answer, digit=-1, image=None) -> dict:
        """`image` uint8 RGB (R, R, 3) is what the vision encoder reads; `codes` are unused (the
        understanding path does not see the VQ codes)."""
        if image is None:
            raise ConfigError("Janus reads an MMU image through its vision encoder: its row needs the image's pixels")
        pixels = self.codec.preprocess(np.asarray(image)[None])[0]
        n = self.n_vision_tokens
        span = [self.boi, *[self.placeholder] * n, self.eoi]
        kinds = ["special", "special", *["image"] * n, "special"]
        return answer_row(self, [self.bos, *span], kinds, question + " ", [], answer, digit, pixels=pixels)
