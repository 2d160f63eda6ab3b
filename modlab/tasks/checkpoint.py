"""Reading modlab's Lightning checkpoints: one-line errors for every way a file can be wrong."""

from __future__ import annotations

from pathlib import Path

import torch

from modlab.errors import CheckpointError

LM_KIND = "lm"  # checkpoint["modlab_kind"] of a causal-LM checkpoint (pretrained or router-tuned)


def load_checkpoint_file(ckpt_path: str, role: str = "checkpoint") -> dict:
    """The raw dict of a torch checkpoint file; `role` names it in errors (e.g. "init_from")."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{role} '{ckpt_path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{role} '{ckpt_path}' is corrupt or not a torch checkpoint ({type(e).__name__})") from None
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
