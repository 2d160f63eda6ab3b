"""Tiny random Hugging Face models built from config classes: causal LMs of every family in
modlab.hf_layer_map, and unified models with an offline processor (a byte-level tokenizer
with the family's special tokens). What the tests, the benchmarks and a first try of modlab
without any weights run on. Nothing is downloaded; `save_pretrained` on the model (and the
processor) gives a directory that `model.path=` loads as it loads a real one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from modlab.hf_layer_map import HF_FAMILIES
from modlab.models.hf_unified.hf_showo import fit_digit_codebook, save_showo_directory
from modlab.models.hf_unified.showo_phi import build_showo_phi

# The sizes of a tiny causal LM (a byte-level vocabulary needs at least 256 entries)
TINY_LM_SIZES = dict(
    vocab_size=260,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
# Families whose config sizes attention heads by head_dim whatever the width (Qwen3 128, the
# Gemmas 256 by default): a small model sets it to hidden_size / heads, as the others compute it
SIZED_BY_HEAD_DIM = ("qwen3", "gemma", "gemma2", "gemma3_text")
# Config values a family's defaults get wrong at tiny sizes: Phi-3's pad id (32000) lies outside the vocabulary
TINY_LM_EXTRA = {"phi3": {"pad_token_id": 0}}


def tiny_causal_lm_config(family: str, **values):
    """The transformers config of a small random causal LM of `family` (modlab.hf_layer_map):
    TINY_LM_SIZES, what the family needs at such sizes, then `values` (any config key)."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    import transformers

    values = {**TINY_LM_SIZES, **TINY_LM_EXTRA.get(family, {}), **values}
    if family in SIZED_BY_HEAD_DIM:
        values.setdefault("head_dim", values["hidden_size"] // values["num_attention_heads"])
    return getattr(transformers, HF_FAMILIES[family].config_class)(**values)


def tiny_causal_lm(family: str, seed: int = 0, **values):
    """A small random causal LM of `family` (fp32, its weights drawn after torch.manual_seed(seed));
    `values` as for tiny_causal_lm_config."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    import transformers

    config = tiny_causal_lm_config(family, **values)
    torch.manual_seed(seed)
    return getattr(transformers, HF_FAMILIES[family].causal_lm_class)(config)


def byte_level_tokenizer(specials: list[str], **named):
    """A byte-level BPE tokenizer with no merges (256 byte tokens), then `specials` (added
    special tokens) with `named` special-token attributes (e.g. boi_token="<|image start|>")."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
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


def _text_sizes(tok, n_layer: int, hidden: int, heads: int) -> dict:
    """The text decoder's sizes and special ids (every family's tiny text config)."""
    return dict(
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


def tiny_emu3(n_codes: int = 32, n_layer: int = 4, hidden: int = 64, heads: int = 4, seed: int = 0):
    """(Emu3ForConditionalGeneration, Emu3Processor): a tiny VQ-VAE (32x32 images, an 8x8 code
    grid of `n_codes` codes) and a `hidden`-wide, `n_layer`-deep text decoder, random weights."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
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
    text = Emu3TextConfig(**_text_sizes(tok, n_layer, hidden, heads))
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(Emu3Config(vq_config=vq, text_config=text, vocabulary_map=vocab_map))
    image_processor = Emu3ImageProcessor(
        min_pixels=32 * 32, max_pixels=32 * 32, spatial_factor=4, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model.eval(), Emu3Processor(image_processor, tok)


# the tiny VQ models: GroupNorm(32) needs channel counts that are multiples of 32; downsampling 4:
# 32 px -> an 8x8 grid of codes
TINY_VQ = dict(base_channels=32, channel_multiplier=[1, 2, 2], num_res_blocks=1)
GRID_CODES = 8 * 8


def _quiet_image_processor(cls, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torchvision is not installed: the PIL image processor"
        return cls(**kwargs)


def tiny_chameleon(n_codes: int = 32, n_layer: int = 4, hidden: int = 64, heads: int = 4, seed: int = 0):
    """(ChameleonForConditionalGeneration, ChameleonProcessor): tiny_emu3's sizes. Chameleon's
    vocabulary names image code c "IMGIMG<the digits of c as letters A..J>Z" (what its vocabulary
    mapping parses); the processor's image start / end are <racm3:break> / <eoss>, and it ends
    every prompt with the tokenizer's sep token."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import (
        ChameleonConfig,
        ChameleonForConditionalGeneration,
        ChameleonImageProcessor,
        ChameleonProcessor,
        ChameleonVQVAEConfig,
    )

    named = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "sep_token": "<reserved08706>",
        "image_token": "<image>",
    }
    visual = ["IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(c)) + "Z" for c in range(n_codes)]
    tok = byte_level_tokenizer([*named.values(), "<racm3:break>", "<eoss>", *visual], **named)
    vq = ChameleonVQVAEConfig(
        embed_dim=8, num_embeddings=n_codes, latent_channels=8, resolution=32, attn_resolutions=[], **TINY_VQ
    )
    config = ChameleonConfig(
        **_text_sizes(tok, n_layer, hidden, heads), vq_config=vq.to_dict(), vocabulary_map=tok.get_vocab()
    )
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(config)
    image_processor = _quiet_image_processor(
        ChameleonImageProcessor, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return model.eval(), ChameleonProcessor(image_processor, tok, image_seq_length=GRID_CODES)


def tiny_janus(n_codes: int = 32, n_layer: int = 4, hidden: int = 64, heads: int = 4, seed: int = 0):
    """(JanusForConditionalGeneration, JanusProcessor): tiny_emu3's sizes, a SigLIP encoder of
    8x8 patches (16 image placeholders for MMU) beside the VQ model (64 codes for T2I)."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessor,
        JanusProcessor,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    named = {
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
        "pad_token": "<｜▁pad▁｜>",
        "image_token": "<image_placeholder>",
        "boi_token": "<begin_of_image>",
        "eoi_token": "<end_of_image>",
    }
    tok = byte_level_tokenizer(list(named.values()), **named)
    vision = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        mlp_ratio=2.0,
        projection_dim=hidden,  # the aligner maps the vision features to the text width
        num_image_tokens=GRID_CODES,  # what Janus's generate() draws: the VQ grid (576 = 24 x 24 in Janus)
    )
    vq = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=n_codes,
        latent_channels=8,
        projection_dim=hidden,  # the generation aligner's output and the generation head's input: the text width
        image_token_embed_dim=hidden,
        **TINY_VQ,
    )
    config = JanusConfig(
        text_config=LlamaConfig(**_text_sizes(tok, n_layer, hidden, heads)).to_dict(),
        vision_config=vision.to_dict(),
        vq_config=vq.to_dict(),
        image_token_id=tok.convert_tokens_to_ids(named["image_token"]),
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    image_processor = _quiet_image_processor(
        JanusImageProcessor, size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model.eval(), JanusProcessor(image_processor, tok, num_image_tokens=(32 // 8) ** 2)


def _save(model_and_processor, path: Path) -> Path:
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers.utils import logging

    logging.disable_progress_bar()
    model, processor = model_and_processor
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Path(path)


# each registered HF unified family's tiny builder (modlab.registry: UnifiedSpec.tiny): a random
# model with its processor (offline byte-level tokenizer, tiny VQ model: 32x32 images, an 8x8 code
# grid), saved with save_pretrained


def save_tiny_emu3(path: Path, n_codes: int = 32, n_layer: int = 4, seed: int = 0) -> Path:
    return _save(tiny_emu3(n_codes=n_codes, n_layer=n_layer, seed=seed), path)


def save_tiny_chameleon(path: Path, n_codes: int = 32, n_layer: int = 4, seed: int = 0) -> Path:
    return _save(tiny_chameleon(n_codes=n_codes, n_layer=n_layer, seed=seed), path)


def save_tiny_janus(path: Path, n_codes: int = 32, n_layer: int = 4, seed: int = 0) -> Path:
    return _save(tiny_janus(n_codes=n_codes, n_layer=n_layer, seed=seed), path)


def save_tiny_showo(
    path: Path, n_codes: int = 32, n_layer: int = 4, seed: int = 0, max_text_len: int = 32, released: bool = False
) -> Path:
    """A tiny random Show-o on Phi (modlab.models.hf_unified.hf_showo's directory): a byte-level
    tokenizer (<|endoftext|> = <|sot|> = <|eot|>), Show-o's vocabulary around it, and the stand-in
    image codebook fitted on the training digits at 32x32 (4x4 patches: an 8x8 code grid).
    `released`: the weights in Show-o's released layout (pytorch_model.bin, `showo.`-prefixed
    keys) beside Phi's own config (its vocabulary not yet resized), as Show-o's checkpoint ships."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import PhiConfig
    from transformers.utils import logging

    path = Path(path)
    logging.disable_progress_bar()
    tok = byte_level_tokenizer([], bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eot = tok.eos_token_id
    config = PhiConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        max_position_embeddings=512,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    torch.manual_seed(seed)
    model, vocab = build_showo_phi(config, n_codes, len(tok))
    save_showo_directory(path, model, vocab, tok, fit_digit_codebook(32, n_codes, 4, seed=seed), max_text_len)
    if released:
        (path / "model.safetensors").unlink()
        torch.save({"showo." + k: v for k, v in model.state_dict().items()}, path / "pytorch_model.bin")
        (path / "config.json").write_text(json.dumps(config.to_dict()))
    return path
