"""A GGUF file (llama.cpp's format, usually quantised) made into a `save_pretrained` directory:
transformers dequantises it to float32 once, and the directory (model.safetensors, config.json
and the tokenizer the GGUF carries) then loads like any other local model (`model.path=DIR`),
in seconds and without the `gguf` package.

Any GGUF whose architecture transformers reads and whose model is one of modlab's causal-LM
families (modlab.hf_layer_map) works; anything else is a one-line error.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from modlab.errors import CheckpointError, ConfigError
from modlab.models.hf_causal_lm import SUPPORTED
from modlab.models.memory_fit import check_fits_memory, parameter_count

GGUF_MAGIC = b"GGUF"
# while converting, the dequantised tensors and the model each hold the float32 weights (measured:
# Gemma 3 270M, 1.07 GB of weights, peaks at 2.7 GB resident with torch and transformers)
CONVERSION_COPIES = 2


def read_gguf(path: Path):
    """The file's gguf.GGUFReader (metadata and tensor index, memory-mapped); a one-line error
    when it is missing, not GGUF, or cut short / corrupt."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with the bytes GGUF)")
    # optional (modlab[real]): imported when a GGUF file is converted
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, struct.error, OSError) as e:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {' '.join(str(e).split())[:150]})"
        ) from None


def gguf_causal_lm_config(path: Path):
    """The transformers config of the GGUF's model, checked to be a supported causal-LM family."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError) as e:  # "GGUF model with architecture bert is not supported yet."
        raise ConfigError(f"{path}: transformers cannot read this GGUF ({' '.join(str(e).split())[:200]})") from None
    if config.model_type not in SUPPORTED:
        raise ConfigError(f"{path} holds a '{config.model_type}' model; supported: {', '.join(SUPPORTED)}")
    return config


def check_gguf(path: Path):
    """The config of the GGUF's model, once the file is known to be a readable GGUF of a supported
    family that fits in memory while converting; else a one-line ConfigError / CheckpointError."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    read_gguf(path)
    config = gguf_causal_lm_config(path)
    check_fits_memory(parameter_count(config), torch.float32, f"converting {path}", copies=CONVERSION_COPIES)
    return config


def save_gguf_as_hf(path: Path, out: Path, checked: bool = False) -> Path:
    """Dequantise the GGUF at `path` to float32 and write its model and tokenizer to `out` with
    save_pretrained. Every way the file can be wrong is a ConfigError / CheckpointError before
    anything is written (check_gguf; `checked`: the caller ran it already)."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not checked:
        check_gguf(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, IndexError, RuntimeError, OSError, struct.error) as e:
        raise CheckpointError(
            f"{path}: the model could not be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    if getattr(model.hf_quantizer, "packed_modules", None):  # transformers' own GGUF kernels (Qwen3.5, LFM2)
        raise ConfigError(f"{path}: transformers kept this model's weights in GGUF blocks; it cannot be saved")
    # the weights are plain float32 tensors now; transformers refuses to save a model it still
    # marks as GGUF-quantised ("not serializable"), so the marks go
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
