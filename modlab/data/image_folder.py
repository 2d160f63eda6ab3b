"""The user's own images: a folder of image files with their captions, tokenized once by a VQ codec.

    folder/
        captions.jsonl    one JSON object a line: {"file": "cat.png", "caption": "a cat",
                          "question": "what animal?", "answer": "a cat"}  (question/answer optional)
        captions.csv      or the same columns in a CSV with a header row
        cat.png ...       any format Pillow reads; file names are relative to the folder

Each image is converted to RGB (transparency over white), center-cropped to a square and resized
(bicubic) to the codec's resolution, then encoded. The codes are cached on disk in
`cache_dir/<codec.identity>-<folder digest>/` (codes.npy, memory-mapped when read, and
records.json), where the digest covers the captions file's bytes and each listed image's name,
size and modification time: an unchanged folder is read back without running the VQ encoder, an
edited one is tokenized again. A cache directory is written under a temporary name and renamed
into place whole, so an interrupted run leaves either no cache or a complete one.

Every problem with the folder is a one-line ConfigError that names the file (and line).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from modlab.errors import ConfigError

if TYPE_CHECKING:
    from modlab.data.vq_codec import ImageCodec

log = logging.getLogger("modlab.data.image_folder")

CAPTION_FILES = ("captions.jsonl", "captions.csv")
# bump when load_image or the cache layout changes: every old cache then misses
CACHE_VERSION = "image-folder-v1"


@dataclass(frozen=True)
class ImageRecord:
    file: str  # relative to the folder
    caption: str
    question: str | None = None
    answer: str | None = None


@dataclass
class TokenizedFolder:
    records: list[ImageRecord]
    codes: torch.Tensor  # long (N, n_tokens): row i is the image of records[i]
    from_cache: bool
    cache_path: Path


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _captions_file(folder: Path) -> Path:
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} does not exist (or is not a directory)")
    present = [folder / name for name in CAPTION_FILES if (folder / name).is_file()]
    if not present:
        if not any(folder.iterdir()):
            raise ConfigError(f"image folder {folder} is empty: it needs images and a captions.jsonl or captions.csv")
        raise ConfigError(f"image folder {folder} has no captions.jsonl or captions.csv")
    if len(present) > 1:
        raise ConfigError(f"image folder {folder} has both captions.jsonl and captions.csv: keep one")
    return present[0]


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark from some editors
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl_rows(path: Path):
    """(line number, dict) for each non-blank line."""
    for n, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} line {n} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path} line {n} is not a JSON object with 'file' and 'caption'")
        yield n, row


def _csv_rows(path: Path):
    reader = csv.DictReader(io.StringIO(_text(path), newline=""))
    columns = reader.fieldnames or []
    for name in ("file", "caption"):
        if name not in columns:
            raise ConfigError(f"{path} has no '{name}' column in its header row (columns: {', '.join(columns)})")
    for row in reader:
        # an empty CSV cell is an absent value; line_num counts the header as line 1
        yield reader.line_num, {k: v for k, v in row.items() if k is not None and v not in (None, "")}


def _record(path: Path, n: int, row: dict, folder: Path) -> ImageRecord:
    where = f"{path} line {n}"
    values = {}
    for key in ("file", "caption", "question", "answer"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' is not a string")
        values[key] = value if value else None  # "" counts as absent
    for key in ("file", "caption"):
        if values[key] is None:
            raise ConfigError(f"{where} has no '{key}'")
    if (values["question"] is None) != (values["answer"] is None):
        # an MMU row needs both; an answer alone would be dropped silently
        has = "a question but no answer" if values["question"] is not None else "an answer but no question"
        raise ConfigError(f"{where} has {has}")
    name = Path(values["file"])
    if name.is_absolute() or ".." in name.parts:
        raise ConfigError(f"{where}: image '{values['file']}' is not a path inside the folder")
    if not (folder / name).is_file():
        raise ConfigError(f"{where} names image '{values['file']}', which is not in {folder}")
    return ImageRecord(**values)


def read_image_folder(folder: str | Path) -> list[ImageRecord]:
    """The folder's captions, checked: every listed image exists, questions come with answers."""
    folder = Path(folder)
    path = _captions_file(folder)
    rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _csv_rows(path)
    records = [_record(path, n, row, folder) for n, row in rows]
    if not records:
        raise ConfigError(f"{path} lists no images")
    return records


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """uint8 (R, R, 3): RGB, the centered largest square, resized bicubically to `resolution`."""
    # Pillow only when an image file is read
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos store their rotation in EXIF
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                # what a viewer shows: transparent pixels over white, not their hidden RGB values
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            if s != resolution:
                im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except Exception as e:  # any decoder failure (truncated, not an image, ...): name the file
        raise ConfigError(f"cannot read image {path}: {_one_line(e)}") from None


def folder_digest(folder: str | Path, records: list[ImageRecord] | None = None) -> str:
    """sha256 (16 hex digits) of the captions file's bytes and each listed image's name, size and
    modification time: what changes when the folder is edited."""
    folder = Path(folder)
    records = read_image_folder(folder) if records is None else records
    captions = _captions_file(folder)
    h = hashlib.sha256(CACHE_VERSION.encode())
    h.update(captions.name.encode() + b"\0" + captions.read_bytes())
    for name in sorted({r.file for r in records}):
        st = (folder / name).stat()
        h.update(f"\0{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def tokenize_images(images: np.ndarray, codec: ImageCodec, batch_size: int = 64) -> torch.Tensor:
    """uint8 (N, R, R, 3) at the codec's resolution -> long codes (N, codec.n_tokens)."""
    return codec.encode(images, batch_size=batch_size)


def _read_cache(path: Path, records: list[ImageRecord], n_tokens: int) -> torch.Tensor | None:
    try:
        meta = json.loads((path / "records.json").read_text(encoding="utf-8"))
        # "c": copy-on-write memory map. Pages are read from disk as they are used, like "r", but
        # the array is writable, so torch shares it without a copy and nothing can write the file.
        codes = np.load(path / "codes.npy", mmap_mode="c")
        cached = [ImageRecord(**r) for r in meta["records"]]
    except (OSError, ValueError, KeyError, TypeError):  # absent, or not a cache this module wrote
        return None
    if cached != records or codes.shape != (len(records), n_tokens) or codes.dtype != np.int64:
        return None  # not this folder's cache after all (hand-edited?): tokenize again
    return torch.from_numpy(codes)


def _write_cache(path: Path, records: list[ImageRecord], folder: Path, codec: ImageCodec, batch_size: int) -> None:
    """Encode every image into a temporary directory next to `path`, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        rows_of: dict[str, list[int]] = {}  # an image listed twice (two captions) is encoded once
        for i, r in enumerate(records):
            rows_of.setdefault(r.file, []).append(i)
        files = list(rows_of)
        codes = np.lib.format.open_memmap(tmp / "codes.npy", "w+", np.int64, (len(records), codec.n_tokens))
        # load and encode a batch at a time: a large folder never sits in memory as pixels
        for i in range(0, len(files), batch_size):
            names = files[i : i + batch_size]
            batch = tokenize_images(np.stack([load_image(folder / f, codec.resolution) for f in names]), codec)
            for name, row in zip(names, batch.numpy()):
                codes[rows_of[name]] = row
        codes.flush()
        del codes
        meta = {"folder": str(folder), "codec": codec.identity, "records": [asdict(r) for r in records]}
        (tmp / "records.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for name in ("codes.npy", "records.json"):  # on disk before the rename makes them visible
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if path.exists():
            if _read_cache(path, records, codec.n_tokens) is not None:  # another process wrote it meanwhile
                return
            shutil.rmtree(path)  # a stale cache that did not match (see _read_cache): replace it
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "codes.npy").exists():  # not another process finishing the same cache first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tokenize_image_folder(
    folder: str | Path, codec: ImageCodec, cache_dir: str | Path, batch_size: int = 64
) -> TokenizedFolder:
    """The folder's records and their codes, from the cache when the folder is unchanged."""
    folder = Path(folder)
    records = read_image_folder(folder)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{codec.identity}-{folder_digest(folder, records)}"
    codes = _read_cache(path, records, codec.n_tokens)
    if codes is not None:
        log.info("read %d images from cache at %s", len(records), path)
        return TokenizedFolder(records, codes, True, path)
    _write_cache(path, records, folder, codec, batch_size)
    codes = _read_cache(path, records, codec.n_tokens)
    if codes is None:
        raise ConfigError(f"the token cache {path} could not be read back after writing it")
    log.info("tokenized %d images from %s, cached at %s", len(records), folder, path)
    return TokenizedFolder(records, codes, False, path)
