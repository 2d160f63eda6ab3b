"""Will a model fit in memory? Its weights' size in a dtype, counted from its config before any
weight is loaded, against the memory this process may still use, so that a model too large is a
one-line error naming both sizes rather than a machine that swaps or an out-of-memory kill.

The available memory is the smallest of /proc/meminfo's MemAvailable and the room left under this
process's cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), or `$MODLAB_MEMORY_GB` where
set (to reserve memory for something else, or to test the check without allocating).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from modlab.errors import ConfigError

MEMORY_ENV = "MODLAB_MEMORY_GB"
GB = 1e9
# cgroup (limit, usage) file pairs: v2 then v1; a limit of "max" or near 2**63 means none
CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)
NO_LIMIT = 2**60


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory_bytes() -> int | None:
    """Bytes this process may still allocate, or None where the system does not say (not Linux)."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        try:
            return int(float(override) * GB)
        except ValueError:
            raise ConfigError(f"${MEMORY_ENV}={override!r} is not a number of GB") from None
    candidates = [_meminfo_available()]
    for limit_file, usage_file in CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < NO_LIMIT:
            candidates.append(max(limit - usage, 0))
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def size(n_bytes: int) -> str:
    """Bytes in GB, or in MB below 0.1 GB (tiny models)."""
    return f"{n_bytes / GB:.1f} GB" if n_bytes >= 0.1 * GB else f"{n_bytes / 1e6:.1f} MB"


def parameter_count(config) -> int:
    """The number of parameters of the causal LM `config` describes (tied weights once), from a
    copy built on the meta device: no memory, no weights read."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_fits_memory(n_params: int, dtype: torch.dtype, what: str, copies: int = 1) -> None:
    """A one-line ConfigError when `copies` of `n_params` weights in `dtype` exceed the available memory."""
    need = copies * n_params * torch.empty((), dtype=dtype).element_size()
    available = available_memory_bytes()
    if available is not None and need > available:
        name = str(dtype).removeprefix("torch.")
        held = f", held {copies} times" if copies > 1 else ""
        halve = "model.dtype=bfloat16 halves it; " if dtype == torch.float32 and copies == 1 else ""
        raise ConfigError(
            f"{what} needs {size(need)} ({n_params:,} parameters in {name}{held}), but only "
            f"{size(available)} of memory are available ({halve}${MEMORY_ENV} sets the available memory)"
        )
