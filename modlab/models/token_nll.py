"""Next-token negative log-likelihood of a causal LM without holding every row's full-vocabulary
logits at once.

A real vocabulary makes the output head the largest tensor of a step: Gemma 3's 262,144 entries
are 1 MiB of fp32 logits per token, so one evaluation batch of 64 rows x 128 tokens would need
8.6 GB before the softmax copies. The head is applied to the labelled positions only, a chunk of
tokens at a time; under autograd each chunk is checkpointed (its logits are recomputed in the
backward pass), so training holds one chunk's logits too. When the head is frozen (Router-Tuning,
routers-only MoD) nothing but the hidden states needs a gradient, and that gradient is taken in the
forward pass, chunk by chunk (`_FrozenHeadNLL`): the head runs once forward and once backward per
token instead of twice forward (on Gemma 3 270M the head is 335 MFLOP a token, more than the 18
layers together, so this cuts a Router-Tuning step by about a quarter). A byte-level LM fits in
one chunk and computes exactly what `F.cross_entropy(..., ignore_index)` does.
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


class _FrozenHeadNLL(torch.autograd.Function):
    """Summed NLL of a head with no trainable parameters: d NLL / d h is computed chunk by chunk
    in the forward pass (one head forward and backward per chunk, one chunk's logits held) and
    the backward pass only scales it."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, y: torch.Tensor, head, step: int) -> torch.Tensor:
        total = h.new_zeros((), dtype=torch.float32)
        grads = []
        with torch.enable_grad():
            for i in range(0, h.shape[0], step):
                hc = h[i : i + step].detach().requires_grad_()
                loss = _chunk_nll(head, hc, y[i : i + step])
                (g,) = torch.autograd.grad(loss, hc)
                total += loss.detach()
                grads.append(g)
        ctx.save_for_backward(torch.cat(grads) if grads else torch.zeros_like(h))
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        (grad_h,) = ctx.saved_tensors
        return grad_total.to(grad_h.dtype) * grad_h, None, None, None


def token_nll(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    chunk_logits: int = CHUNK_LOGITS,
    head_frozen: bool = False,
) -> tuple[torch.Tensor, int]:
    """(summed NLL over the labelled tokens, their count). `hidden` (B, T, d): the final hidden
    states; `head` maps hidden states to logits; labels IGNORE_INDEX count nothing.
    `head_frozen`: the head has no parameter that needs a gradient (only `hidden` gets one; the
    faster path above). Said by the caller: a wrong True silently drops the head's gradients."""
    keep = labels != IGNORE_INDEX
    h, y = hidden[keep], labels[keep]
    n = int(y.numel())
    step = max(1, chunk_logits // max(1, vocab_size))
    grad = torch.is_grad_enabled() and h.requires_grad
    if grad and head_frozen:
        return _FrozenHeadNLL.apply(h, y, head, step), n
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, step):
        if grad and n > step:  # recompute this chunk's logits in backward instead of keeping them
            total = total + checkpoint(_chunk_nll, head, h[i : i + step], y[i : i + step], use_reentrant=False)
        else:
            total = total + _chunk_nll(head, h[i : i + step], y[i : i + step])
    return total, n


def head_is_frozen(lm) -> bool:
    """Whether no parameter of a causal LM's output head needs a gradient (`lm.head_parameters()`)."""
    return not any(p.requires_grad for p in lm.head_parameters())


def lm_nll(lm, ids: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """token_nll of a causal LM (modlab's CausalLM or an HFCausalLM: `hidden_states`, `logits_of`
    and `head_parameters`) on one batch."""
    return token_nll(
        lm.logits_of, lm.hidden_states(ids, valid=valid), labels, lm.vocab_size, head_frozen=head_is_frozen(lm)
    )
