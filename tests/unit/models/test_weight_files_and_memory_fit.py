"""modlab.models.weight_files (a model directory's weight files checked before transformers reads
them) and modlab.models.memory_fit (the memory a process may still use)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modlab.errors import CheckpointError, ConfigError
from modlab.models import memory_fit
from modlab.models.weight_files import check_weight_files


def _shards(d: Path) -> Path:
    save_file({"a": torch.zeros(3)}, d / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(2, 2)}, d / "model-00002-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def test_every_shard_of_an_index_is_checked(tmp_path):
    d = _shards(tmp_path)
    assert [f.name for f in check_weight_files(d)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    second = d / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors is truncated or corrupt"):
        check_weight_files(d)
    second.unlink()
    with pytest.raises(CheckpointError, match="names shards that are not in .*: model-00002-of-00002.safetensors"):
        check_weight_files(d)
    (d / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="is not a safetensors index"):
        check_weight_files(d)


def test_a_directory_without_weights_and_a_header_longer_than_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="holds no weights"):
        check_weight_files(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="model.safetensors is not a safetensors file"):
        check_weight_files(tmp_path)


def test_the_available_memory_is_the_smallest_of_meminfo_and_the_cgroup_room(tmp_path, monkeypatch):
    monkeypatch.delenv(memory_fit.MEMORY_ENV, raising=False)
    meminfo = memory_fit._meminfo_available()
    if meminfo is None:
        pytest.skip("no /proc/meminfo")
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    monkeypatch.setattr(memory_fit, "CGROUP_FILES", ((str(limit), str(usage)),))
    assert abs(memory_fit.available_memory_bytes() - meminfo) < 1e8  # no cgroup files (MemAvailable moves a little)
    limit.write_text("max\n")  # cgroup v2: no limit
    usage.write_text("1000\n")
    assert abs(memory_fit.available_memory_bytes() - meminfo) < 1e8
    limit.write_text("5000\n")
    assert memory_fit.available_memory_bytes() == 4000  # the cgroup leaves less than the machine
    usage.write_text("9000\n")
    assert memory_fit.available_memory_bytes() == 0


def test_the_memory_override_and_a_bad_value(monkeypatch):
    monkeypatch.setenv(memory_fit.MEMORY_ENV, "2.5")
    assert memory_fit.available_memory_bytes() == int(2.5e9)
    memory_fit.check_fits_memory(600_000_000, torch.float32, "m")  # 2.4 GB
    with pytest.raises(ConfigError, match=r"m needs 3.0 GB \(1,500,000,000 parameters in bfloat16\), but only 2.5 GB"):
        memory_fit.check_fits_memory(1_500_000_000, torch.bfloat16, "m")
    monkeypatch.setenv(memory_fit.MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match="MODLAB_MEMORY_GB='lots' is not a number"):
        memory_fit.available_memory_bytes()
