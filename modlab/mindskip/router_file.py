"""Routers saved alone: a safetensors file of the router weights, with what they were tuned on
in its metadata, loadable onto the base model they were tuned for.

    tensors   layers.<i>.weight   (1, d_model) for every routed layer i
    metadata  format = modlab-mindskip-routers, version = 1, and `modlab`: a JSON object with
              the routed layers, granularity, threshold, d_model, n_layer and the base (the
              pretrained checkpoint or Hugging Face directory) plus the run's configs
"""

from __future__ import annotations

import json
from pathlib import Path

from modlab.errors import CheckpointError

ROUTER_FORMAT = "modlab-mindskip-routers"
ROUTER_VERSION = "1"


def save_routers(skip, path: str | Path, info: dict) -> Path:
    """Write `skip`'s routers and `info` (JSON-serialisable) to `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"layers": skip.layers, "granularity": skip.granularity, "threshold": skip.threshold, **info}
    save_file(
        skip.router_state(),
        str(path),
        metadata={"format": ROUTER_FORMAT, "version": ROUTER_VERSION, "modlab": json.dumps(meta)},
    )
    return path


def read_routers(path: str | Path) -> tuple[dict, dict]:
    """(tensors, info) of a router file, or a one-line CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"router file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"router file '{path}' is not a safetensors file ({type(e).__name__})") from None
    if meta.get("format") != ROUTER_FORMAT:
        raise CheckpointError(f"'{path}' is not a modlab MindSkip router file")
    if meta.get("version") != ROUTER_VERSION:
        raise CheckpointError(
            f"router file '{path}' has version {meta.get('version')}; this modlab reads {ROUTER_VERSION}"
        )
    return tensors, json.loads(meta["modlab"])


def load_routers(skip, path: str | Path) -> dict:
    """Put the routers of `path` onto `skip` (built for the same base and layers); returns the info."""
    tensors, info = read_routers(path)
    if list(info["layers"]) != list(skip.layers) or info["granularity"] != skip.granularity:
        raise CheckpointError(
            f"router file '{path}' routes layers {info['layers']} ({info['granularity']}); "
            f"this model routes {skip.layers} ({skip.granularity})"
        )
    try:
        skip.load_router_state(tensors)
    except ValueError as e:
        raise CheckpointError(f"router file '{path}' does not fit this model: {e}") from None
    skip.threshold = float(info["threshold"])
    for g in skip.gates:
        g.threshold = skip.threshold
    return info
