"""The user's image folder: captions read and checked, images tokenized by a real (tiny, random)
Emu3 VQ model once and then read back from the on-disk cache without running the encoder."""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from PIL import Image  # noqa: E402
from transformers import Emu3ImageProcessor, Emu3VQVAEConfig  # noqa: E402
from transformers.models.emu3.modeling_emu3 import Emu3VQVAE  # noqa: E402

import modlab.data.image_folder as image_folder  # noqa: E402
from modlab.data.digits import load_digit_splits  # noqa: E402
from modlab.data.image_folder import (  # noqa: E402
    ImageRecord,
    folder_digest,
    load_image,
    read_image_folder,
    tokenize_image_folder,
)
from modlab.data.vq_codec import Emu3Codec, digits_as_rgb  # noqa: E402
from modlab.errors import ConfigError  # noqa: E402

R = 32


@pytest.fixture(scope="module")
def codec() -> Emu3Codec:
    torch.manual_seed(0)
    cfg = Emu3VQVAEConfig(
        codebook_size=32, embed_dim=8, latent_channels=8, base_channels=32, channel_multiplier=[1, 2, 2],
        num_res_blocks=1, attn_resolutions=[], hidden_size=64, num_attention_heads=1, temporal_downsample_factor=1,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ip = Emu3ImageProcessor(
            min_pixels=R * R, max_pixels=R * R, spatial_factor=4, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    return Emu3Codec(Emu3VQVAE(cfg), ip, R)


@pytest.fixture
def encoder_calls(codec):
    """How many times the VQ encoder's forward really ran (a hook on the real module)."""
    calls = []
    handle = codec.vq.encoder.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def records_20() -> list[dict]:
    rows = []
    for i in range(20):
        row = {"file": f"img{i:02d}.png", "caption": f"picture number {i}"}
        if i % 3 == 0:
            row |= {"question": "what is it?", "answer": f"number {i}"}
        rows.append(row)
    return rows


def write_images(folder: Path) -> None:
    """Ten random colour images of assorted non-square sizes, ten real digits rendered at 48 px."""
    rng = np.random.default_rng(0)
    digits = digits_as_rgb(load_digit_splits()["train"].images[:10], 48)
    for i in range(20):
        if i < 10:
            h, w = (40, 56) if i % 2 else (64, 48)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            pixels = digits[i - 10]
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")


def write_jsonl(folder: Path, rows: list[dict]) -> None:
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_csv(folder: Path, rows: list[dict]) -> None:
    with open(folder / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "caption", "question", "answer"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    write_images(d)
    write_jsonl(d, records_20())
    return d


def loaded(folder: Path, records) -> np.ndarray:
    return np.stack([load_image(folder / r.file, R) for r in records])


def test_tokenizing_encodes_each_image_and_a_second_call_reads_the_cache_without_the_encoder(
    folder, tmp_path, codec, encoder_calls, caplog
):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="modlab.data.image_folder"):
        first = tokenize_image_folder(folder, codec, cache)
    assert not first.from_cache and len(encoder_calls) > 0
    assert [r.file for r in first.records] == [f"img{i:02d}.png" for i in range(20)]
    assert first.records[3] == ImageRecord("img03.png", "picture number 3", "what is it?", "number 3")
    assert first.records[1].question is None and first.records[1].answer is None
    assert first.codes.dtype == torch.long and first.codes.shape == (20, codec.n_tokens)
    assert torch.equal(first.codes, codec.encode(loaded(folder, first.records)))
    assert first.cache_path == cache / f"{codec.identity}-{folder_digest(folder)}"
    assert sorted(p.name for p in cache.iterdir()) == [first.cache_path.name]  # no temporary left
    assert sorted(p.name for p in first.cache_path.iterdir()) == ["codes.npy", "records.json"]
    assert f"tokenized 20 images from {folder}, cached at {first.cache_path}" in caplog.messages

    encoder_calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="modlab.data.image_folder"):
        second = tokenize_image_folder(folder, codec, cache)
    assert second.from_cache and encoder_calls == []
    assert second.cache_path == first.cache_path and second.records == first.records
    assert torch.equal(second.codes, first.codes) and second.codes.dtype == torch.long
    assert caplog.messages == [f"read 20 images from cache at {first.cache_path}"]


def test_editing_a_caption_or_touching_an_image_tokenizes_again(folder, tmp_path, codec, encoder_calls):
    cache = tmp_path / "cache"
    first = tokenize_image_folder(folder, codec, cache)
    rows = records_20()
    rows[5]["caption"] = "a different caption"
    write_jsonl(folder, rows)
    encoder_calls.clear()
    edited = tokenize_image_folder(folder, codec, cache)
    assert not edited.from_cache and encoder_calls and edited.cache_path != first.cache_path
    assert edited.records[5].caption == "a different caption"
    assert torch.equal(edited.codes, first.codes)  # same images, same codes

    st = (folder / "img07.png").stat()
    os.utime(folder / "img07.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    encoder_calls.clear()
    touched = tokenize_image_folder(folder, codec, cache)
    assert not touched.from_cache and encoder_calls and touched.cache_path not in (first.cache_path, edited.cache_path)


def test_a_csv_folder_gives_the_same_records_and_codes(folder, tmp_path, codec):
    from_jsonl = tokenize_image_folder(folder, codec, tmp_path / "cache")
    (folder / "captions.jsonl").unlink()
    write_csv(folder, records_20())
    from_csv = tokenize_image_folder(folder, codec, tmp_path / "cache")
    assert not from_csv.from_cache  # another captions file, another digest
    assert from_csv.records == from_jsonl.records
    assert torch.equal(from_csv.codes, from_jsonl.codes)


def test_an_image_listed_twice_is_encoded_once_and_gets_the_same_codes(folder, tmp_path, codec, encoder_calls):
    write_jsonl(folder, [{"file": "img04.png", "caption": "one"}, {"file": "img09.png", "caption": "two"},
                         {"file": "img04.png", "caption": "three"}])  # fmt: skip
    out = tokenize_image_folder(folder, codec, tmp_path / "cache", batch_size=1)
    assert len(encoder_calls) == 2 and out.codes.shape == (3, codec.n_tokens)
    assert torch.equal(out.codes[0], out.codes[2]) and not torch.equal(out.codes[0], out.codes[1])


def test_an_interrupted_run_leaves_no_cache_and_keeps_the_previous_one(folder, tmp_path, codec, monkeypatch):
    cache = tmp_path / "cache"
    good = tokenize_image_folder(folder, codec, cache)
    rows = records_20()
    rows[0]["caption"] = "edited"
    write_jsonl(folder, rows)

    real, n = image_folder.load_image, []

    def interrupted(path, resolution):
        n.append(1)
        if len(n) == 9:  # third batch of four
            raise KeyboardInterrupt
        return real(path, resolution)

    monkeypatch.setattr(image_folder, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokenize_image_folder(folder, codec, cache, batch_size=4)
    assert [p.name for p in cache.iterdir()] == [good.cache_path.name]  # neither a half cache nor a temporary
    monkeypatch.setattr(image_folder, "load_image", real)
    assert not tokenize_image_folder(folder, codec, cache).from_cache
    write_jsonl(folder, records_20())
    assert tokenize_image_folder(folder, codec, cache).from_cache  # the first cache survived


def test_a_damaged_cache_is_tokenized_again_and_the_codes_never_write_the_file(folder, tmp_path, codec, encoder_calls):
    cache = tmp_path / "cache"
    first = tokenize_image_folder(folder, codec, cache)
    expected = first.codes.clone()
    (first.cache_path / "records.json").write_text("{")
    encoder_calls.clear()
    again = tokenize_image_folder(folder, codec, cache)
    assert not again.from_cache and encoder_calls and again.cache_path == first.cache_path
    assert torch.equal(again.codes, expected)
    again.codes[0, 0] += 1  # a copy-on-write map: the change stays in this process
    assert torch.equal(tokenize_image_folder(folder, codec, cache).codes, expected)


def test_load_image_center_crops_to_a_square_and_resizes(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)  # the crop drops 10 columns either side
    pixels[:, 10:50] = (0, 200, 0)
    pixels[:, 50:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    for size in (40, 16):
        img = load_image(tmp_path / "wide.png", size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert (img == (0, 200, 0)).all()
    grey = Image.fromarray(np.full((50, 30), 77, np.uint8), mode="L")
    grey.save(tmp_path / "grey.jpg")
    assert load_image(tmp_path / "grey.jpg", 20).shape == (20, 20, 3)


def test_transparent_pixels_load_as_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # hidden red under alpha 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png", 8) == 255).all()


def one_line_error(fn, *args, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


JSONL_PROBLEMS = {
    "not JSON": ('{"file": "img00.png", "caption": "a"}\n{"file": "img01.png", caption}\n', r"line 2 is not JSON"),
    "not an object": ('["img00.png", "a"]\n', r"line 1 is not a JSON object"),
    "no file": ('{"file": "img00.png", "caption": "a"}\n\n{"caption": "b"}\n', r"line 3 has no 'file'"),
    "no caption": ('{"file": "img00.png"}\n', r"line 1 has no 'caption'"),
    "missing image": ('{"file": "nope.png", "caption": "a"}\n', r"line 1 names image 'nope.png', which is not in"),
    "question only": ('{"file": "img00.png", "caption": "a", "question": "what?"}\n', r"a question but no answer"),
    "answer only": ('{"file": "img00.png", "caption": "a", "answer": "it"}\n', r"an answer but no question"),
    "not a string": ('{"file": "img00.png", "caption": 3}\n', r"line 1: 'caption' is not a string"),
    "outside": ('{"file": "../img00.png", "caption": "a"}\n', r"is not a path inside the folder"),
    "no records": ("\n\n", r"lists no images"),
}


@pytest.mark.parametrize("problem", list(JSONL_PROBLEMS))
def test_each_bad_captions_line_is_a_one_line_error_naming_it(folder, problem):
    text, match = JSONL_PROBLEMS[problem]
    (folder / "captions.jsonl").write_text(text)
    message = one_line_error(read_image_folder, folder, match=match)
    assert "captions.jsonl" in message


def test_bad_folders_are_one_line_errors(tmp_path):
    one_line_error(read_image_folder, tmp_path / "nowhere", match="does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(read_image_folder, tmp_path / "empty", match="is empty")
    (tmp_path / "bare").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "bare" / "a.png")
    one_line_error(read_image_folder, tmp_path / "bare", match="has no captions.jsonl or captions.csv")
    write_jsonl(tmp_path / "bare", [{"file": "a.png", "caption": "a"}])
    write_csv(tmp_path / "bare", [{"file": "a.png", "caption": "a"}])
    one_line_error(read_image_folder, tmp_path / "bare", match="both captions.jsonl and captions.csv")


def test_bad_csv_and_encoding_are_one_line_errors(folder):
    (folder / "captions.jsonl").unlink()
    (folder / "captions.csv").write_text("file,text\nimg00.png,a\n")
    one_line_error(read_image_folder, folder, match=r"captions.csv has no 'caption' column")
    (folder / "captions.csv").write_text("file,caption,question,answer\nimg00.png,a,,\nimg01.png,b,what?,\n")
    one_line_error(read_image_folder, folder, match=r"captions.csv line 3 has a question but no answer")
    (folder / "captions.csv").write_bytes(b"file,caption\nimg00.png,caf\xe9\n")
    one_line_error(read_image_folder, folder, match="is not UTF-8 text")


def test_an_unreadable_image_is_a_one_line_error_naming_it(folder, tmp_path, codec):
    (folder / "img13.png").write_bytes(b"this is not a png")
    one_line_error(load_image, folder / "img13.png", R, match=r"cannot read image .*img13.png")
    message = one_line_error(tokenize_image_folder, folder, codec, tmp_path / "cache", match=r"img13.png")
    assert message.startswith("cannot read image")
    assert list((tmp_path / "cache").iterdir()) == []  # and no cache was left behind
