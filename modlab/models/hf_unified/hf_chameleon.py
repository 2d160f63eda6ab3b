"""Chameleon (transformers 5.x) behind modlab's unified interface (modlab.models.hf_unified.base).

Chameleon (ChameleonForConditionalGeneration; rows as ChameleonProcessor lays them out, which
ends every prompt with the tokenizer's sep token, its chat mode):
    image   <racm3:break> codes <eoss>       (the processor's image start / end tokens)
    MMU     <bos> image question <sep> answer <eos>      loss on the answer and <eos>
    T2I     <bos> caption <sep> image <eos>              next-token loss from the image start on
    LM      <bos> text                                   next-token loss
The codes are vocabulary tokens, mapped by the model's own `vocabulary_mapping.img2bpe` (what
ChameleonModel.get_image_tokens does to a processed image). Its forward sets the logits of every
image token to the dtype's minimum (the released model writes text only); MMU and LM rows get
exactly those logits, T2I rows the unmasked lm_head over the decoder's hidden states, so that
image codes can be learned and drawn. transformers has no Chameleon VQ decoder: its images can
be drawn but not decoded (codec.decode says so in one line).
"""

from __future__ import annotations

import torch

from modlab.data.tokens import TASK_ID
from modlab.errors import ConfigError
from modlab.models.hf_unified.base import HFUnifiedModel, answer_row, make_row, t2i_labels, vocabulary_code_ids


class HFChameleon(HFUnifiedModel):
    """ChameleonForConditionalGeneration (see the module docstring for its rows)."""

    def __init__(self, hf, processor, codec, path, route_tokens=("image",)):
        super().__init__(hf, processor, codec, path, route_tokens)
        vocab = hf.model.vocabulary_mapping
        self.register_buffer("code_to_id", vocabulary_code_ids(vocab.img2bpe, codec.n_codes), False)
        image_vocab = torch.zeros(self.config.vocab_size, dtype=torch.bool)
        image_vocab[vocab.image_tokens] = True
        self.register_buffer("image_vocab", image_vocab, False)  # what the model's forward never predicts
        self.boi, self.eoi = processor.image_start_token_id, processor.image_end_token_id
        self.sep = self.tokenizer.sep_token_id
        if self.sep is None:
            raise ConfigError("the Chameleon tokenizer has no sep_token (ChameleonProcessor ends every prompt with it)")

    def _logits(self, ids, mask, positions, task, cache, pixels) -> torch.Tensor:
        out = self.hf.model(
            input_ids=ids, attention_mask=mask.long(), position_ids=positions, cache=cache, use_cache=cache is not None
        )
        logits = self.hf.lm_head(out.last_hidden_state)
        # ChameleonForConditionalGeneration.forward: image tokens are never text; T2I rows predict them
        text_rows = task != TASK_ID["t2i"]
        blocked = text_rows[:, None, None] & self.image_vocab[None, None, :]
        return logits.masked_fill(blocked, torch.finfo(logits.dtype).min)

    def image_span(self, codes: torch.Tensor | None) -> tuple[list[int], list[str]]:
        """The image as ChameleonProcessor lays it out; codes None: placeholders (a prompt's image)."""
        n = self.codec.n_tokens
        grid = self.code_ids(codes) if codes is not None else [self.pad] * n
        return [self.boi, *grid, self.eoi], ["special", *["image"] * n, "special"]

    def t2i_row(self, caption, codes, digit=-1) -> dict:
        text = self.text_ids(caption)
        img, img_kinds = self.image_span(codes)
        ids = [self.bos, *text, self.sep, *img, self.eos]
        kinds = ["special", *["caption"] * len(text), "special", *img_kinds, "special"]
        labels = t2i_labels(ids, 1 + len(text) + 1)  # the codes, the image end, <eos>
        return make_row(ids, labels, kinds, [k == "caption" for k in kinds], "t2i", digit)

    def mmu_row(self, codes, question, answer, digit=-1, image=None) -> dict:
        img, img_kinds = self.image_span(codes)
        return answer_row(self, [self.bos, *img], ["special", *img_kinds], question, [self.sep], answer, digit)
