"""Hugging Face causal LMs (the families of modlab.hf_layer_map: Llama, Mistral, Qwen2/3,
Gemma 1/2/3, Phi, Phi-3) from a local directory, behind the interface of modlab's own CausalLM, so
MindSkip, Router-Tuning, token routing and the evaluation treat both alike.

Nothing is downloaded: `model.path` must be a directory written by `save_pretrained`. The text
is tokenized with the directory's tokenizer; a directory without one is read as UTF-8 bytes (ids
0..255) only when its vocabulary is byte-sized (at most BYTE_LEVEL_MAX_VOCAB ids: the bytes and
some special ids, as tiny test models built from a config object have), since a real model's
large vocabulary on byte ids would train without complaint on the wrong tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError

import torch
import torch.nn as nn
from safetensors import SafetensorError

from modlab.data.text_tokenizer import ByteTokenizer, HFTokenizer
from modlab.errors import CheckpointError, ConfigError
from modlab.hf_layer_map import HF_FAMILIES, decoder_layers, hf_family
from modlab.models.causal_lm import TokenFlops
from modlab.models.memory_fit import check_fits_memory, parameter_count
from modlab.models.weight_files import check_weight_files

SUPPORTED = tuple(HF_FAMILIES)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# a vocabulary this small is bytes (256) plus special ids: text without a tokenizer is UTF-8 bytes
BYTE_LEVEL_MAX_VOCAB = 512


@dataclass
class HFCache:
    """transformers' DynamicCache plus the number of tokens seen (positions are passed
    explicitly, so a layer without cache entries never shifts them)."""

    kv: object
    length: int = 0

    def entries(self) -> list[int]:
        return [layer.get_seq_length() for layer in self.kv.layers]


class HFCausalLM(nn.Module):
    attention_returns_tuple = True  # transformers attention returns (output, weights)
    # DynamicCache reports the sequence length (and sizes the decode mask) from layer 0's
    # entries, so that layer's attention must always run.
    always_runs = frozenset({0})

    def __init__(self, model: nn.Module, path: str):
        super().__init__()
        self.hf, self.path = model, path
        self.family = hf_family(model.config)
        # transformers also sizes the masks of each attention type (full / sliding) from its first layer
        layer_types = list(getattr(model.config, "layer_types", None) or [])
        self.always_runs = frozenset({0} | {layer_types.index(t) for t in set(layer_types)})

    @property
    def n_layer(self) -> int:
        return self.hf.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.hf.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.hf.config.vocab_size

    def attention_slots(self) -> list[tuple[nn.Module, str]]:
        return [(layer, self.family.attention) for layer in self.decoder_layers()]

    def attention_out_norm_slots(self) -> list[tuple[nn.Module, str]] | None:
        """(parent, attribute) of the norm each layer applies to its attention's output before
        the residual add (Gemma 2 / 3's post_attention_layernorm); None where the attention's
        output is added as it is (Llama, ...)."""
        name = self.family.attn_out_norm
        return [(layer, name) for layer in self.decoder_layers()] if name else None

    def decoder_layers(self) -> list[nn.Module]:
        return list(decoder_layers(self.hf, self.family))

    def new_cache(self) -> HFCache:
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from transformers import DynamicCache

        return HFCache(DynamicCache(config=self.hf.config))

    def token_flops(self) -> TokenFlops:
        """Counted from the modules a decoder layer holds (modlab.routing.hf_flops), not from a
        formula of the config: Phi's MLP has two matrices where Llama's SwiGLU has three, Phi-3
        fuses q, k, v. The attention's projections are the Linears under the attention module
        (a MindSkip gate's router excluded: it scores a whole row once); everything else of
        the layer is the MLP."""
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.routing.hf_flops import linear_weights, query_width

        c = self.hf.config
        layer = self.decoder_layers()[0]
        layer = getattr(layer, "block", layer)  # a token-routed layer wraps the decoder layer
        slot = getattr(layer, self.family.attention)
        attn = getattr(slot, "attn", slot)  # a MindSkip GatedAttention wraps the attention module
        return TokenFlops(
            attn_linear=2 * linear_weights(attn),
            attn_per_key=2 * 2 * query_width(c),
            mlp=2 * (linear_weights(layer) - linear_weights(slot)),
            head=2 * c.hidden_size * c.vocab_size,
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The final (normalised) hidden states (B, T, d) of a full forward, without the output
        head: with a real vocabulary the logits of a batch are its largest tensor, so losses
        apply `logits_of` a chunk of tokens at a time (modlab.models.token_nll)."""
        mask = valid.long() if valid is not None else None
        return self.hf.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    def logits_of(self, h: torch.Tensor) -> torch.Tensor:
        """The model's own head on hidden states, with its final soft-capping (Gemma 2)."""
        logits = self.hf.get_output_embeddings()(h)
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def head_parameters(self):
        """The parameters `logits_of` uses (whether the loss may skip their gradients)."""
        return self.hf.get_output_embeddings().parameters()

    def forward(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor | None = None,
        cache: HFCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab); `last_only`: the last position's alone (B, 1, vocab), what a
        generation step needs (a 256-token prefill of a 262k vocabulary would spend more on the
        head than on every layer together)."""
        keep = 1 if last_only else 0  # transformers: 0 keeps every position
        if cache is None:
            mask = valid.long() if valid is not None else None
            return self.hf(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        B, T = ids.shape
        positions = torch.arange(cache.length, cache.length + T, device=ids.device).expand(B, T)
        logits = self.hf(
            input_ids=ids, position_ids=positions, cache=cache.kv, use_cache=True, logits_to_keep=keep
        ).logits
        cache.length += T
        return logits


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, accelerator: str | None) -> str:
    """`model.dtype` for the device the trainer runs on: auto is bfloat16 on a CUDA device with
    bf16, float32 elsewhere (CPU); bfloat16 where the device lacks it is a one-line ConfigError.
    `accelerator` None: no device is known (analysis, evaluation): auto is float32."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            has_bf16, device = False, f"trainer.accelerator={accelerator}, but no CUDA device is available"
        else:
            has_bf16, device = torch.cuda.is_bf16_supported(), f"the CUDA device {torch.cuda.get_device_name()}"
        if dtype == "auto":
            return "bfloat16" if has_bf16 else "float32"
    elif accelerator in ("cpu", "auto"):
        try:
            has_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            has_bf16 = False
        device = "this CPU (no AVX512-BF16 / AMX)"
    elif accelerator is None:
        has_bf16, device = True, ""
    else:
        has_bf16, device = False, f"trainer.accelerator={accelerator} (modlab checks bf16 on cpu and gpu only)"
    if dtype == "auto":
        return "float32"
    if dtype == "bfloat16" and not has_bf16:
        raise ConfigError(f"model.dtype=bfloat16 but {device} has no bf16: use model.dtype=float32 or auto")
    return dtype


def load_hf_causal_lm(path: str, dtype: str = "float32") -> tuple[HFCausalLM, ByteTokenizer | HFTokenizer]:
    """The model (in `dtype`: float32 | bfloat16, auto = float32; eval mode) and its tokenizer;
    every way a directory can be wrong is a one-line ConfigError / CheckpointError."""
    p = Path(path)
    if not (p / "config.json").is_file():
        gguf = [p] if p.suffix == ".gguf" and p.is_file() else sorted(p.glob("*.gguf")) if p.is_dir() else []
        if gguf:
            raise ConfigError(
                f"model.path '{path}' holds a GGUF file: make it a transformers directory first "
                f"(python -m modlab.real_lm --gguf {gguf[0]}, docs/real_lm.md)"
            )
        raise ConfigError(f"model.path '{path}' is not a Hugging Face model directory (no config.json)")
    try:
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise ConfigError("model=hf_causal_lm needs transformers: pip install 'modlab[hf]'") from None
    try:
        config = AutoConfig.from_pretrained(p)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"model.path '{path}': config.json is not a transformers config ({type(e).__name__})"
        ) from None
    if config.model_type not in SUPPORTED:
        raise ConfigError(f"model.path '{path}' holds a '{config.model_type}' model; supported: {', '.join(SUPPORTED)}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its weight-loading bar would break one-line errors on stderr
    tokenizer = load_tokenizer(p, config.vocab_size)
    files = check_weight_files(p)
    torch_dtype = TORCH_DTYPES.get(resolve_dtype(dtype, None))
    if torch_dtype is None:
        raise ConfigError(f"model.dtype '{dtype}' is unknown: float32, bfloat16 or auto")
    check_fits_memory(parameter_count(config), torch_dtype, f"model.path '{path}'")
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(p, dtype=torch_dtype, attn_implementation="sdpa")
        except ValueError as e:  # a family without SDPA support (Gemma 2: attention logit soft-capping)
            if "attention implementation" not in str(e):
                raise
            model = AutoModelForCausalLM.from_pretrained(p, dtype=torch_dtype, attn_implementation="eager")
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, UnpicklingError) as e:
        raise CheckpointError(
            f"model.path '{path}': the weights in {', '.join(f.name for f in files)} could not be loaded "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    return HFCausalLM(model.eval(), str(p.resolve())), tokenizer


def load_tokenizer(p: Path, vocab_size: int) -> ByteTokenizer | HFTokenizer:
    """The directory's tokenizer; UTF-8 bytes where it has none and the vocabulary is byte-sized.
    A missing tokenizer of a larger vocabulary, or one with no vocabulary file (transformers then
    builds a tokenizer of only its special tokens from tokenizer_config.json), is a ConfigError."""
    wanted = "tokenizer.json or tokenizer.model (save the tokenizer with the model: tokenizer.save_pretrained(DIR))"
    if any((p / f).is_file() for f in TOKENIZER_FILES):
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from transformers import AutoTokenizer

        try:
            tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(p))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ConfigError(
                f"model.path '{p}': its tokenizer could not be loaded ({type(e).__name__}): {wanted}"
            ) from None
        if tokenizer.vocab_size < ByteTokenizer.vocab_size < vocab_size:
            raise ConfigError(
                f"model.path '{p}': its tokenizer has only {tokenizer.vocab_size} tokens for a vocabulary of "
                f"{vocab_size}: the vocabulary file is missing, {wanted}"
            )
        return tokenizer
    if vocab_size < ByteTokenizer.vocab_size:
        raise ConfigError(f"model.path '{p}' has no tokenizer and a vocabulary of {vocab_size} < 256 bytes")
    if vocab_size > BYTE_LEVEL_MAX_VOCAB:
        raise ConfigError(
            f"model.path '{p}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}) and a vocabulary of "
            f"{vocab_size}, too large for UTF-8 bytes: add {wanted}"
        )
    return ByteTokenizer()
