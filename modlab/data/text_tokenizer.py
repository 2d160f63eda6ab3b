"""Text tokenizers for the causal LMs: UTF-8 bytes (no learned tokenizer needed offline), or a
Hugging Face model's own tokenizer when its directory ships one."""

from __future__ import annotations


class ByteTokenizer:
    """Token id = byte value (0..255)."""

    kind = "bytes"
    vocab_size = 256
    prefix: list[int] = []  # nothing goes before a text

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer behind the same two methods (no special tokens added by
    `encode`); `prefix` holds the special tokens the tokenizer puts before a text (Gemma's and
    Llama's <bos>; none for Qwen2): windows of text start with them, as the model was trained."""

    kind = "hf"

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.vocab_size = len(tokenizer)
        self.prefix = special_prefix(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))


def special_prefix(tokenizer, probe: str = "The text.") -> list[int]:
    """The ids a tokenizer adds before a text when asked for its special tokens (what the model
    saw at the start of every training sequence); an end-of-text token it may add is not kept."""
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []
