"""The shared token space of the unified models.

    [0, 256)                      text: UTF-8 bytes (no learned text tokenizer needed offline)
    [256, 256 + n_codes)          image codes from the image tokenizer
    then the specials             [T2I] [MMU] [SOI] [EOI] [PAD] [MASK] [EOS]

Row formats (docs/data.md): T2I `[T2I] text [SOI] image [EOI]`, MMU `[MMU] [SOI] image [EOI] text`,
LM `text`.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT_VOCAB = 256
SPECIALS = ("T2I", "MMU", "SOI", "EOI", "PAD", "MASK", "EOS")

# Task ids: a router knows nothing of tasks beyond these integers.
TASKS = ("t2i", "mmu", "lm")
TASK_ID = {name: i for i, name in enumerate(TASKS)}

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenSpace:
    n_image_codes: int

    @property
    def image_offset(self) -> int:
        return TEXT_VOCAB

    @property
    def vocab_size(self) -> int:
        return TEXT_VOCAB + self.n_image_codes + len(SPECIALS)

    def special(self, name: str) -> int:
        return TEXT_VOCAB + self.n_image_codes + SPECIALS.index(name)

    @property
    def t2i(self) -> int:
        return self.special("T2I")

    @property
    def mmu(self) -> int:
        return self.special("MMU")

    @property
    def soi(self) -> int:
        return self.special("SOI")

    @property
    def eoi(self) -> int:
        return self.special("EOI")

    @property
    def pad(self) -> int:
        return self.special("PAD")

    @property
    def mask(self) -> int:
        return self.special("MASK")

    @property
    def eos(self) -> int:
        return self.special("EOS")

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_text(self, ids) -> str:
        """Text ids to a string; anything that is not a text byte ends the text."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < TEXT_VOCAB:
                break
            out.append(i)
        return out.decode("utf-8", errors="replace")
