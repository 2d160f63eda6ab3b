"""Emu3 (transformers 5.x) behind modlab's unified interface (modlab.models.hf_unified.base).

Emu3 (transformers' Emu3ForConditionalGeneration; rows as Emu3Processor lays them out):
    image   <|image start|> "{h}*{w}" <|image token|> (w codes + <|extra_200|>) x h <|extra_201|> <|image end|>
    MMU     <bos> image question " " answer <eos>        loss on the answer and <eos>
    T2I     <bos> caption image <eos>                     next-token loss on the image span
    LM      <bos> text                                    next-token loss
The image codes are mapped to the vocabulary by the model's own `vocabulary_map` (what
Emu3Model.get_image_tokens does to a processed image), so a pre-tokenized row is exactly the
sequence the model embeds for the processor's input. Images are generated autoregressively, one
code per step with the KV cache (routed layers by their causal decision, the compact cache), with
each image row's end-of-line token forced as Emu3's own generation forces it; classifier-free
guidance runs the uncaptioned rows in the same batch (2B rows), captions made invisible as in
training (caption dropout).
"""

from __future__ import annotations

import torch

from modlab.models.hf_unified.base import HFUnifiedModel, answer_row, make_row, t2i_labels, vocabulary_code_ids


class HFEmu3(HFUnifiedModel):
    """Emu3ForConditionalGeneration (see the module docstring for its rows)."""

    def __init__(self, hf, processor, codec, path, route_tokens=("image",)):
        super().__init__(hf, processor, codec, path, route_tokens)
        vocab = hf.model.vocabulary_mapping
        self.register_buffer("code_to_id", vocabulary_code_ids(vocab.img2bpe, codec.n_codes), False)
        tok = self.tokenizer
        ids = tok.convert_tokens_to_ids
        self.boi, self.eoi = ids(tok.boi_token), ids(tok.eoi_token)
        self.wrapper, self.eof, self.eol = ids(tok.image_wrapper_token), ids(tok.eof_token), vocab.eol_token_id
        self.row_end = (self.eol,)  # Emu3's generation forces the end of each image row
        h, w = codec.grid
        self.size_ids = self.text_ids(f"{h}*{w}")

    def _logits(self, ids, mask, positions, task, cache, pixels) -> torch.Tensor:
        out = self.hf(
            input_ids=ids, attention_mask=mask.long(), position_ids=positions, cache=cache, use_cache=cache is not None
        )
        return out.logits

    # ---- rows ------------------------------------------------------------------------------------

    def image_span(self, codes: torch.Tensor | None) -> tuple[list[int], list[str]]:
        """The image as Emu3's processor lays it out; codes None: placeholders (a prompt's image)."""
        h, w = self.codec.grid
        ids = [self.boi, *self.size_ids, self.wrapper]
        kinds = ["special"] * len(ids)
        flat = self.code_ids(codes) if codes is not None else [self.pad] * (h * w)
        grid = [flat[r * w : (r + 1) * w] for r in range(h)]
        for row in grid:
            ids += [*row, self.eol]
            kinds += ["image"] * w + ["special"]
        return ids + [self.eof, self.eoi], kinds + ["special", "special"]

    def t2i_row(self, caption, codes, digit=-1) -> dict:
        text = self.text_ids(caption)
        img, img_kinds = self.image_span(codes)
        ids = [self.bos, *text, *img, self.eos]
        kinds = ["special", *["caption"] * len(text), *img_kinds, "special"]
        # from the last special before the first code: the codes, their end-of-line tokens, the end
        labels = t2i_labels(ids, 1 + len(text) + len(self.size_ids) + 1)
        return make_row(ids, labels, kinds, [k == "caption" for k in kinds], "t2i", digit)

    def mmu_row(self, codes, question, answer, digit=-1, image=None) -> dict:
        img, img_kinds = self.image_span(codes)
        return answer_row(self, [self.bos, *img], ["special", *img_kinds], question + " ", [], answer, digit)
