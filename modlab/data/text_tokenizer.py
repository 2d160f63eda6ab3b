"""Text tokenizers for the causal LMs: UTF-8 bytes (no learned tokenizer needed offline), or a
Hugging Face model's own tokenizer when its directory ships one."""

from __future__ import annotations


class ByteTokenizer:
    """Token id = byte value (0..255)."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer behind the same two methods (no special tokens added)."""

    kind = "hf"

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))
