"""Data configuration (plain dataclass; the `data` config group's schema)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modlab.data.tokens import TASKS
from modlab.errors import ConfigError

KINDS = ("digits", "scenes")
# causal LMs: how data.lm_files are read (modlab.data.text_corpus, modlab.data.instructions)
LM_FORMATS = ("text", "jsonl", "alpaca")


@dataclass
class DataConfig:
    name: str = "digits"
    kind: str = "digits"  # digits: one 8x8 digit per image | scenes: a grid of digits (modlab.data.scenes)
    split_seed: int = 0  # the train/val/test split of the 1,797 digits is fixed by this seed
    grid: int = 2  # scenes: cells per side (2 or 3); an image is 8 * grid pixels square
    scene_seed: int = 0  # scenes: item i of a split is drawn from (scene_seed, split, task, i)
    train_scenes: int = 100_000  # scenes: training items per task (each drawn once per epoch)
    val_scenes: int = 256  # scenes: validation items per task
    test_scenes: int = 500  # scenes: MMU test questions (balanced over the question types)
    image_tokenizer: str = "pixel"  # pixel | patch_kmeans
    levels: int = 17  # pixel: grey levels (17 is lossless for load_digits)
    codebook_size: int = 64  # patch_kmeans: number of codes
    patch: int = 2  # patch_kmeans: patch side
    lm_files: list[str] = field(default_factory=list)  # empty: Python's pydoc topics
    # text: plain text files | jsonl: one JSON object a line, its `text_field` is a document |
    # alpaca: instruction / input / output records (JSONL or a JSON list), loss on the output only
    lm_format: str = "text"
    text_field: str = "text"
    lm_length: int = 96  # bytes per LM row
    lm_train_rows: int = 0  # > 0: a fixed set of that many training windows (Router-Tuning's small set)
    # rows of each task per training batch; 0 leaves a task out
    batch_size: dict[str, int] = field(default_factory=lambda: {"t2i": 32, "mmu": 32, "lm": 4})
    eval_batch_size: int = 128
    num_workers: int = 0
    # Hugging Face unified models: train on your images instead of the digits: a folder with
    # captions.jsonl / captions.csv (file, caption, optional question / answer; modlab.data.image_folder)
    image_folder: str | None = None
    # where the folder's VQ codes are cached (keyed by the tokenizer's identity and the folder's
    # content); "": <output_dir>/cache/image_tokens
    image_cache: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"data.kind '{self.kind}' is unknown ({', '.join(KINDS)})")
        if self.grid not in (2, 3):
            raise ConfigError(f"data.grid must be 2 or 3, got {self.grid}")
        if min(self.train_scenes, self.val_scenes, self.test_scenes) < 1:
            raise ConfigError("data.train_scenes, data.val_scenes and data.test_scenes must be >= 1")
        if self.image_tokenizer not in ("pixel", "patch_kmeans"):
            raise ConfigError(f"data.image_tokenizer '{self.image_tokenizer}' is unknown (pixel, patch_kmeans)")
        if not 2 <= self.levels <= 17:
            raise ConfigError(f"data.levels must be in [2, 17], got {self.levels}")
        if self.codebook_size < 2 or self.patch not in (1, 2, 4, 8):
            raise ConfigError("data.codebook_size must be >= 2 and data.patch one of 1, 2, 4, 8")
        unknown = set(self.batch_size) - set(TASKS)
        if unknown:
            raise ConfigError(f"data.batch_size has unknown task(s) {sorted(unknown)} (known: {', '.join(TASKS)})")
        if any(v < 0 for v in self.batch_size.values()) or not any(self.batch_size.values()):
            raise ConfigError("data.batch_size values must be >= 0 and at least one task must be > 0")
        if self.lm_format not in LM_FORMATS:
            raise ConfigError(f"data.lm_format '{self.lm_format}' is unknown ({', '.join(LM_FORMATS)})")
        if self.lm_format != "text" and not self.lm_files:
            raise ConfigError(f"data.lm_format={self.lm_format} reads your files: give data.lm_files=[...]")
        if self.lm_train_rows < 0:
            raise ConfigError(f"data.lm_train_rows must be >= 0, got {self.lm_train_rows}")
        if self.lm_length < 8 or self.eval_batch_size < 1 or self.num_workers < 0:
            raise ConfigError("data.lm_length must be >= 8, data.eval_batch_size >= 1, data.num_workers >= 0")

    @property
    def image_size(self) -> int:
        """Pixels per image side."""
        return 8 * self.grid if self.kind == "scenes" else 8
