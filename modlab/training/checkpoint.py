"""Reading modlab's Lightning checkpoints: one-line errors for every way a file can be wrong.
Causal LMs load from theirs without Lightning (`load_pretrained_lm`)."""

from __future__ import annotations

from pathlib import Path

import torch

from modlab.data.image_tokenizer import image_tokenizer_from_state
from modlab.errors import CheckpointError, ModlabError
from modlab.mindskip.router_file import read_routers
from modlab.models.config import ModelConfig
from modlab.registry import get_family
from modlab.routing.install import dense_key

LM_KIND = "lm"  # checkpoint["modlab_kind"] of a causal-LM checkpoint (pretrained or router-tuned)


def load_checkpoint_file(ckpt_path: str, role: str = "checkpoint", mmap: bool = False) -> dict:
    """The raw dict of a torch checkpoint file; `role` names it in errors (e.g. "init_from");
    `mmap`: map the tensors instead of reading them (a cheap check of a large file)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{role} '{ckpt_path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for a damaged file
        # Lightning (checkpoint_io) only to explain a failed load: analyses read checkpoints without it
        from modlab.training.checkpoint_io import load_reason

        raise CheckpointError(f"{role} '{ckpt_path}' is corrupt or not a torch checkpoint: {load_reason(e)}") from None
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
    """A fresh causal LM of the family `cfg.arch` names (native over bytes, or a Hugging Face
    model from `cfg.path`), and its tokenizer."""
    return get_family(cfg.arch).family().new_lm(cfg)  # ModelFamily.new_lm: a one-line error for other families


def checkpoint_arch(ckpt_path: str) -> str:
    """The `model.arch` a modlab checkpoint (or MindSkip router file) records."""
    if str(ckpt_path).endswith(".safetensors"):
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"checkpoint '{ckpt_path}' does not exist")
        _, info = read_routers(ckpt_path)
        return (info.get("model") or {}).get("arch", "lm")
    ckpt = load_checkpoint_file(ckpt_path)
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint '{ckpt_path}' is not a modlab checkpoint")
    # checkpoints from before the family registry name no arch: Show-o-like or the tiny LM
    return (hp.get("model") or {}).get("arch", "lm" if is_lm_checkpoint(ckpt) else "showo")


def module_hparams(hp: dict) -> dict:
    """A checkpoint's hyper-parameters under today's names (`task` was renamed `objective`),
    without Lightning's own `_instantiator` entry."""
    hp = {k: v for k, v in hp.items() if k != "_instantiator"}
    if "task" in hp and "objective" not in hp:
        hp["objective"] = hp.pop("task")
    return hp


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0]


def load_module(module_class, ckpt: dict, ckpt_path: str):
    """The one checkpoint loader of modlab's LightningModules: `module_class` rebuilt from the
    checkpoint's hyper-parameters (`ckpt`, already read and checked by its kind's reader), its
    `on_load_checkpoint` run, its weights loaded (strictly unless the module keeps
    `strict_loading=False`: a router-only checkpoint), in eval mode. A checkpoint this code cannot
    rebuild or fill is one CheckpointError line."""
    try:
        module = module_class(**module_hparams(ckpt["hyper_parameters"]))
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"], strict=module.strict_loading)
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        if isinstance(e, ModlabError):  # already one line (e.g. a ConfigError of the rebuilt model)
            raise
        raise CheckpointError(
            f"checkpoint '{ckpt_path}' does not fit this version of modlab: {_first_line(e)}"
        ) from None
    return module.eval()


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
        raise CheckpointError(f"{role} '{ckpt_path}' does not fit this version of modlab: {_first_line(e)}") from None
    _load_lm_state(lm, ckpt, ckpt_path, role)
    return lm.eval(), tokenizer, ckpt["hyper_parameters"]


# ---- unified (Show-o-like / Emu3-like) checkpoints ------------------------------------------------


def read_unified_checkpoint(ckpt_path: str) -> dict:
    """The raw checkpoint dict of a modlab unified model, or a one-line CheckpointError."""
    ckpt = load_checkpoint_file(ckpt_path)
    if not {"state_dict", "hyper_parameters", "image_tokenizer"} <= set(ckpt):
        raise CheckpointError(f"checkpoint '{ckpt_path}' is not a modlab unified-model checkpoint")
    return ckpt


def init_from_checkpoint(module, ckpt_path: str) -> None:
    """Fine-tuning start: copy a (dense or routed) checkpoint's weights into `module`, whose
    routed layers wrap the same blocks. Routers absent from the checkpoint keep their init."""
    ckpt = read_unified_checkpoint(ckpt_path)
    theirs, ours = ckpt["hyper_parameters"], module.hparams
    if theirs.get("model") != ours["model"]:
        raise CheckpointError(f"init_from '{ckpt_path}' has a different model config ({theirs.get('model')})")
    tokenizer_keys = ("image_tokenizer", "levels", "codebook_size", "patch")
    if any(theirs["data"].get(k) != ours["data"][k] for k in tokenizer_keys):
        raise CheckpointError(f"init_from '{ckpt_path}' was trained with another image tokenizer")
    source = {dense_key(k): v for k, v in ckpt["state_dict"].items() if ".router." not in k}
    target = module.state_dict()
    by_dense_key = {dense_key(k): k for k in target}
    missing = [k for k in by_dense_key if k not in source and ".router." not in k]
    if missing or any(k not in by_dense_key for k in source):
        raise CheckpointError(f"init_from '{ckpt_path}' does not fit this model (e.g. {(missing or list(source))[0]})")
    for k, v in source.items():
        need = tuple(target[by_dense_key[k]].shape)
        if need != tuple(v.shape):
            raise CheckpointError(f"init_from '{ckpt_path}': {k} has shape {tuple(v.shape)}, the model needs {need}")
    module.load_state_dict({by_dense_key[k]: v for k, v in source.items()}, strict=False)
    # the image tokenizer the weights were trained with, and nothing else of the old run: its
    # running FLOPs means (which on_load_checkpoint restores for an exact resume) would otherwise
    # be averaged into the fine-tune's train/flops_per_step
    module.image_tokenizer = image_tokenizer_from_state(ckpt["image_tokenizer"])
