"""The model families: what each command does with each kind of model (one `ModelFamily` per
family, modlab.families.model_family), and the registry that names them (modlab.registry, re-exported
here so a family's code and its users import one place)."""

from __future__ import annotations

from modlab.errors import CheckpointError
from modlab.registry import (
    COMMANDS,
    REGISTRY,
    FamilySpec,
    UnifiedSpec,
    families_for_analysis,
    get_family,
    hf_unified_spec,
    register_family,
    unified_family,
    unregister_family,
)

__all__ = [
    "COMMANDS",
    "REGISTRY",
    "FamilySpec",
    "UnifiedSpec",
    "families_for_analysis",
    "family_of_checkpoint",
    "get_family",
    "hf_unified_spec",
    "register_family",
    "unified_family",
    "unregister_family",
]


def family_of_checkpoint(ckpt_path: str) -> FamilySpec:
    """The family that wrote a checkpoint (or a MindSkip router file), from the `model.arch` it
    records; a one-line CheckpointError for a file that is missing, unreadable or not modlab's."""
    # lazy: reading a checkpoint needs torch; `modlab --help` imports this package for the registry
    from modlab.training.checkpoint import checkpoint_arch

    arch = checkpoint_arch(ckpt_path)
    if arch not in REGISTRY:
        raise CheckpointError(f"checkpoint '{ckpt_path}' holds a '{arch}' model, which no registered family loads")
    return REGISTRY[arch]
