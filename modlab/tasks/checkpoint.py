"""Reading modlab's Lightning checkpoints: one-line errors for every way a file can be wrong.
Causal LMs load from theirs without Lightning (`load_pretrained_lm`)."""

from __future__ import annotations

from pathlib import Path

import torch

from modlab.errors import CheckpointError, ConfigError
from modlab.models.config import ModelConfig

LM_KIND = "lm"  # checkpoint["modlab_kind"] of a causal-LM checkpoint (pretrained or router-tuned)


def load_checkpoint_file(ckpt_path: str, role: str = "checkpoint") -> dict:
    """The raw dict of a torch checkpoint file; `role` names it in errors (e.g. "init_from")."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{role} '{ckpt_path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"{role} '{ckpt_path}' is corrupt or not a torch checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{role} '{ckpt_path}' is not a modlab checkpoint")
    return ckpt


def is_lm_checkpoint(ckpt: dict) -> bool:
    return ckpt.get("modlab_kind") == LM_KIND and {"state_dict", "hyper_parameters"} <= set(ckpt)


def read_lm_checkpoint(ckpt_path: str, role: str = "checkpoint") -> dict:
    ckpt = load_checkpoint_file(ckpt_path, role)
    if not is_lm_checkpoint(ckpt):
        raise CheckpointError(f"{role} '{ckpt_path}' is not an LM checkpoint (train one with +experiment=lm_pretrain)")
    return ckpt


def build_lm(cfg: ModelConfig):
    """A fresh native CausalLM over bytes, or a Hugging Face model from `cfg.path`; and its tokenizer."""
    if cfg.arch == "lm":
        from modlab.data.text_tokenizer import ByteTokenizer
        from modlab.models.causal_lm import CausalLM

        return CausalLM(cfg), ByteTokenizer()
    if cfg.arch == "hf":
        from modlab.models.hf_causal_lm import load_hf_causal_lm

        return load_hf_causal_lm(cfg.path)
    raise ConfigError(f"task=lm needs a causal LM (model=lm or model=hf_causal_lm), not model.arch={cfg.arch}")


def read_pretrained_lm_checkpoint(ckpt_path: str, role: str = "checkpoint") -> dict:
    """An LM checkpoint that holds a whole pretrained LM (a router-tuned one holds routers only)."""
    ckpt = read_lm_checkpoint(ckpt_path, role)
    if ckpt["hyper_parameters"].get("mindskip", {}).get("enabled"):
        raise CheckpointError(
            f"{role} '{ckpt_path}' is a router-tuned checkpoint; give the pretrained LM it was tuned from"
        )
    return ckpt


def _load_lm_state(lm, ckpt: dict, ckpt_path: str, role: str) -> None:
    state = {k.removeprefix("lm."): v for k, v in ckpt["state_dict"].items() if k.startswith("lm.")}
    try:
        lm.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{role} '{ckpt_path}' does not fit this model: {str(e).splitlines()[0]}") from None


def load_lm_weights(lm, ckpt_path: str, role: str = "init_from") -> None:
    """Copy a pretrained (not router-tuned) LM checkpoint's weights into `lm`."""
    _load_lm_state(lm, read_pretrained_lm_checkpoint(ckpt_path, role), ckpt_path, role)


def load_pretrained_lm(ckpt_path: str, role: str = "checkpoint"):
    """(the LM in eval mode, its tokenizer, the checkpoint's hyper-parameters) of a pretrained
    (not router-tuned) LM checkpoint, without Lightning."""
    ckpt = read_pretrained_lm_checkpoint(ckpt_path, role)
    try:
        lm, tokenizer = build_lm(ModelConfig(**ckpt["hyper_parameters"]["model"]))
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"{role} '{ckpt_path}' does not fit this version of modlab: {e}") from None
    _load_lm_state(lm, ckpt, ckpt_path, role)
    return lm.eval(), tokenizer, ckpt["hyper_parameters"]
