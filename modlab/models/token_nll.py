"""Next-token negative log-likelihood of a causal LM without holding every row's full-vocabulary
logits at once.

A real vocabulary makes the output head the largest tensor of a step: Gemma 3's 262,144 entries
are 1 MiB of fp32 logits per token, so one evaluation batch of 64 rows x 128 tokens would need
8.6 GB before the softmax copies. The head is applied to the labelled positions only, a chunk of
tokens at a time; under autograd each chunk is checkpointed (its logits are recomputed in the
backward pass), so training holds one chunk's logits too. A byte-level LM fits in one chunk and
computes exactly what `F.cross_entropy(..., ignore_index)` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from modlab.data.tokens import IGNORE_INDEX

# fp32 logits per chunk: 64 Mi entries = 256 MiB (256 tokens of a 262k vocabulary)
CHUNK_LOGITS = 1 << 26


def _chunk_nll(head: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="sum")


def token_nll(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    chunk_logits: int = CHUNK_LOGITS,
) -> tuple[torch.Tensor, int]:
    """(summed NLL over the labelled tokens, their count). `hidden` (B, T, d): the final hidden
    states; `head` maps hidden states to logits; labels IGNORE_INDEX count nothing."""
    keep = labels != IGNORE_INDEX
    h, y = hidden[keep], labels[keep]
    n = int(y.numel())
    total = hidden.new_zeros((), dtype=torch.float32)
    step = max(1, chunk_logits // max(1, vocab_size))
    grad = torch.is_grad_enabled() and h.requires_grad
    for i in range(0, n, step):
        if grad and n > step:  # recompute this chunk's logits in backward instead of keeping them
            total = total + checkpoint(_chunk_nll, head, h[i : i + step], y[i : i + step], use_reentrant=False)
        else:
            total = total + _chunk_nll(head, h[i : i + step], y[i : i + step])
    return total, n


def lm_nll(lm, ids: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """token_nll of a causal LM (modlab's CausalLM or an HFCausalLM: `hidden_states` and
    `logits_of`) on one batch."""
    return token_nll(lm.logits_of, lm.hidden_states(ids, valid=valid), labels, lm.vocab_size)
