"""Tiny random Hugging Face unified models built from config classes, with an offline processor
(a byte-level tokenizer with the family's special tokens): what the tests, the benchmarks and a
first try of modlab without any weights run on. Nothing is downloaded; `save_pretrained` on the
model and the processor gives a directory that `model.path=` loads as it loads a real one."""

from __future__ import annotations

import torch


def byte_level_tokenizer(specials: list[str], **named):
    """A byte-level BPE tokenizer with no merges (256 byte tokens), then `specials` (added
    special tokens) with `named` special-token attributes (e.g. boi_token="<|image start|>")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    base = {k: v for k, v in named.items() if k in ("bos_token", "eos_token", "pad_token")}
    extra = {k: v for k, v in named.items() if k not in base}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra, **base)
    fast.add_special_tokens({"additional_special_tokens": specials})
    return fast


def tiny_emu3(n_codes: int = 32, n_layer: int = 4, hidden: int = 64, heads: int = 4, seed: int = 0):
    """(Emu3ForConditionalGeneration, Emu3Processor): a tiny VQ-VAE (32x32 images, an 8x8 code
    grid of `n_codes` codes) and a `hidden`-wide, `n_layer`-deep text decoder, random weights."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3ImageProcessor, Emu3Processor
    from transformers.models.emu3.configuration_emu3 import Emu3TextConfig, Emu3VQVAEConfig

    named = {
        "bos_token": "<|extra_203|>",
        "eos_token": "<|extra_204|>",
        "pad_token": "<|endoftext|>",
        "image_token": "<image>",
        "boi_token": "<|image start|>",
        "eoi_token": "<|image end|>",
        "image_wrapper_token": "<|image token|>",
        "eof_token": "<|extra_201|>",
    }
    visual = [f"<|visual token {i:06d}|>" for i in range(n_codes)]
    tok = byte_level_tokenizer([*named.values(), "<|extra_200|>", *visual], **named)
    vocab_map = {s: tok.convert_tokens_to_ids(s) for s in [*named.values(), "<|extra_200|>", *visual]}
    vq = Emu3VQVAEConfig(
        codebook_size=n_codes,
        embed_dim=8,
        latent_channels=8,
        base_channels=32,  # GroupNorm(32) needs a multiple of 32
        channel_multiplier=[1, 2, 2],  # downsampling 4: 32 px -> an 8x8 grid
        num_res_blocks=1,
        attn_resolutions=[],
        hidden_size=64,  # the middle block's attention width: base_channels * the last multiplier
        temporal_downsample_factor=1,
    )
    text = Emu3TextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layer,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=512,
        attention_dropout=0.0,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(Emu3Config(vq_config=vq, text_config=text, vocabulary_map=vocab_map))
    image_processor = Emu3ImageProcessor(
        min_pixels=32 * 32, max_pixels=32 * 32, spatial_factor=4, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model.eval(), Emu3Processor(image_processor, tok)


TINY_BUILDERS = {"emu3": tiny_emu3}


def tiny_unified(family: str, **kwargs):
    """(model, processor) of a tiny random unified model of `family` (TINY_BUILDERS)."""
    if family not in TINY_BUILDERS:
        raise ValueError(f"no tiny builder for '{family}' ({', '.join(TINY_BUILDERS)})")
    return TINY_BUILDERS[family](**kwargs)
