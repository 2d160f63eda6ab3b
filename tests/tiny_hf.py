"""Tiny random Hugging Face causal LMs built from config objects and saved to a directory
(nothing is downloaded). Byte-level text needs a vocabulary of at least 256."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2")


def save_tiny_hf(path: Path, family: str = "llama", n_layer: int = 4, seed: int = 0) -> Path:
    import transformers as T
    from transformers.utils import logging

    logging.disable_progress_bar()
    config_cls, model_cls = {
        "llama": (T.LlamaConfig, T.LlamaForCausalLM),
        "mistral": (T.MistralConfig, T.MistralForCausalLM),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
    }[family]
    cfg = config_cls(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model_cls(cfg).save_pretrained(path)
    return path
