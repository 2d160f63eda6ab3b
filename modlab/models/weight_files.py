"""The weight files of a `save_pretrained` directory, checked before transformers reads them: a
safetensors file whose header is not valid JSON, or whose tensors reach past its end (a copy cut
short), or a shard the index names that is not there, is a one-line CheckpointError naming the file
(transformers would raise safetensors' own error, which names none)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from modlab.errors import CheckpointError

SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_FILES = ("model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json")


def weight_files(directory: Path) -> list[Path]:
    """The weight files transformers would read from `directory`: the safetensors ones (every
    shard of the index) where there are any, else the PyTorch ones; a missing shard is an error."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index} is not a safetensors index (no weight_map)") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not in {directory}: {', '.join(missing)}")
        return [directory / s for s in shards]
    return [directory / f for f in WEIGHT_FILES if (directory / f).is_file()]


def check_safetensors(path: Path) -> None:
    """A CheckpointError naming `path` unless its header parses and its tensors exactly fill it."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header cannot be read)") from None
    data = size - 8 - n
    if max(ends, default=0) != data:
        raise CheckpointError(
            f"{path} is truncated or corrupt: its header lists {max(ends, default=0)} bytes of tensors, "
            f"the file holds {data}"
        )


def check_weight_files(directory: Path) -> list[Path]:
    """The directory's weight files (see weight_files), each safetensors one checked; none is an error."""
    files = weight_files(directory)
    if not files:
        raise CheckpointError(f"{directory} holds no weights (no {' or '.join(WEIGHT_FILES[:3])})")
    for f in files:
        if f.suffix == ".safetensors":
            check_safetensors(f)
    return files
