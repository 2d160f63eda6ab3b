"""Checkpoints that cannot be half-written, and that name their path when they cannot be read.

Lightning's TorchCheckpointIO serialises a checkpoint to memory and then writes it over the
target file: a process killed during that write (pre-emption, a dead node, SIGKILL) leaves a
truncated `last.ckpt`, and the previous one is gone. `AtomicCheckpointIO` writes to a temporary
file in the same directory, flushes and fsyncs it, then `os.replace`s it onto the target (atomic
on POSIX within one file system) and fsyncs the directory, so the target is always either the
previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from modlab.errors import CheckpointError

# Test hook (tests/recipes/test_reliability.py): with this set to N seconds, a save that replaces
# an existing checkpoint writes half of it to its temporary file, creates `<temporary file>.writing`
# and sleeps N seconds before writing the rest, so a test can kill the process mid-write.
PAUSE_ENV = "MODLAB_TEST_CHECKPOINT_WRITE_PAUSE_S"
TMP_PREFIX = ".tmp-"


def temporary_path(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a file system that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write `data` to `path` through a fsync'ed temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0) if path.exists() else 0.0
    try:
        with open(tmp, "wb") as f:
            if pause > 0:
                half = len(data) // 2
                f.write(data[:half])
                f.flush()
                os.fsync(f.fileno())
                Path(f"{tmp}.writing").touch()
                time.sleep(pause)
                f.write(data[half:])
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # e.g. a full disk: name the file
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_reason(e: BaseException) -> str:
    """Why a checkpoint did not load, in a few words (torch's messages run over several lines)."""
    text = " ".join(str(e).split())
    if "central directory" in text or "unexpected EOF" in text or isinstance(e, EOFError):
        return "the file is truncated (a write that did not finish?)"
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with an atomic save and one-line load errors (CheckpointError)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(buffer.getvalue(), Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint '{path}' does not exist")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except Exception as e:
            raise CheckpointError(f"checkpoint '{path}' cannot be loaded: {load_reason(e)}") from None
