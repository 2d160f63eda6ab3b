"""ARank: how many independent directions a layer's attention really uses.

ARank(l) = mean over heads h (and calibration rows) of rank(Q_h K_h^T), the pre-softmax score
matrix over a row's valid tokens (UniMoD; `kind=post_softmax` ranks the softmax map under the
model's own attention mask instead, as earlier work did). The rank is numerical: singular values
(float64 SVD) above `rtol` times the largest count. A low rank means the layer's attention is
explained by few token directions: its tokens are redundant, so the layer is a candidate for
routing. Rank is bounded by min(n, head_dim), so it is reported raw, normalised by the row's
sequence length n, and relative to that bound (`arank_rel`: what the routing plan ranks by,
modlab.analysis.plan_from_arank; rank / n mostly measures how long the rows are). For a Hugging Face
LM, Q and K are read as its own attention uses them: after its RoPE, key heads repeated for
grouped-query attention (modlab.analysis.hf_attention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from modlab.analysis.subject import Subject, layer_attention
from modlab.models.transformer import attention_probs


@contextmanager
def one_thread() -> Iterator[None]:
    """Batched small LAPACK calls gain nothing from threads, and on an oversubscribed CPU a
    threaded batched SVD ran ~30x slower (2 cores, load 11); run them on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def numerical_rank(mats: torch.Tensor, rtol: float) -> torch.Tensor:
    """Rank of each (..., n, m) matrix: singular values > rtol * the largest (0 for a zero matrix)."""
    with one_thread():
        s = torch.linalg.svdvals(mats.double())
    return (s > rtol * s[..., :1]).sum(-1)


def product_rank(a: torch.Tensor, b: torch.Tensor, rtol: float) -> torch.Tensor:
    """numerical_rank(a @ b^T) for (..., n, d) a and b without the n x n product: with a = Q_a R_a
    and b = Q_b R_b (QR, orthonormal Q), a b^T = Q_a (R_a R_b^T) Q_b^T has the singular values of
    the small R_a R_b^T."""
    with one_thread():
        ra = torch.linalg.qr(a.double(), mode="r")[1]
        rb = torch.linalg.qr(b.double(), mode="r")[1]
    return numerical_rank(ra @ rb.transpose(-2, -1), rtol)


def head_ranks(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    rtol: float,
    kind: str = "pre_softmax",
    mask: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, H) ranks of each row's and head's attention matrix over its valid tokens (`probs`: the
    model's own softmax map for post_softmax; default softmax(q k^T / sqrt(d)) under `mask`).

    Padding rows and columns are zeroed, which leaves the singular values of the valid block
    unchanged, so rows of different lengths share one batched SVD."""
    keep = valid[:, None, :, None].to(torch.float64)  # (B, 1, T, 1)
    if kind == "pre_softmax":
        return product_rank(q.double() * keep, k.double() * keep, rtol)
    if kind == "post_softmax":
        if probs is None:
            probs = attention_probs(q.float(), k.float(), mask)
        return numerical_rank(probs.double() * keep * keep.transpose(-2, -1), rtol)
    raise ValueError(f"unknown ARank kind '{kind}'")


@torch.no_grad()
def arank_analysis(
    subject: Subject,
    batches: dict[str, list[dict]],
    rtol: float,
    kind: str = "pre_softmax",
    advance: Callable[[], None] | None = None,
) -> list[dict]:
    """One row per (task, layer): arank (mean rank), arank_std (over rows), arank_norm (rank / n),
    arank_rel (rank / its bound: min(n, head_dim) pre-softmax, n post-softmax), seq_len (mean n) and
    head_arank (mean rank per head)."""
    out = []
    for task, task_batches in batches.items():
        per_layer: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(subject.n_layer)}
        head_dim: dict[int, int] = {}
        for batch in task_batches:
            valid = batch["valid"]

            def read(i, q, k, mask, probs, dim):
                p = probs() if kind == "post_softmax" else None
                per_layer[i].append((head_ranks(q, k, valid, rtol, kind, mask, p).cpu(), valid.sum(1).cpu()))
                head_dim[i] = dim

            with layer_attention(subject, read):
                subject.run(batch)
            if advance:
                advance()
        for i, parts in per_layer.items():
            ranks = torch.cat([r for r, _ in parts]).double()  # (rows, H)
            n = torch.cat([n for _, n in parts]).double()[:, None]
            # the largest rank possible: Q K^T has rank <= head_dim; a softmax map only <= n
            bound = n.clamp(max=head_dim[i]) if kind == "pre_softmax" else n
            row_rank = ranks.mean(1)
            out.append(
                {
                    "task": task,
                    "layer": i,
                    "arank": float(row_rank.mean()),
                    "arank_std": float(row_rank.std()) if len(row_rank) > 1 else 0.0,
                    "arank_norm": float((ranks / n).mean()),
                    "arank_rel": float((ranks / bound).mean()),
                    "seq_len": float(n.mean()),
                    "head_arank": [float(v) for v in ranks.mean(0)],
                }
            )
    return out
