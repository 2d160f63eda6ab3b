"""Where attention goes: the share a query gives to image vs text keys, per layer and task,
split by the query's own modality; and the average attention map per layer.

"Text" is every key that is not an image code (caption / question bytes and the special tokens
[T2I] [MMU] [SOI] [EOI]). Only valid (non-padding) queries count; the maps are over heads and
rows, rows right-padded to the task's longest one and averaged over the rows where the query
is valid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from modlab.analysis.subject import Subject, layer_attention

QUERY_KINDS = ("all", "text", "image")


def image_mass(probs: torch.Tensor, is_image: torch.Tensor, valid: torch.Tensor) -> dict[str, tuple[float, int]]:
    """probs (B, H, T, T) attention maps. Per query kind: (sum over valid queries and heads of the
    attention on image keys, number of such query-heads), so batches can be accumulated."""
    to_image = (probs.float() * is_image[:, None, None, :]).sum(-1)  # (B, H, T)
    H = probs.shape[1]
    out = {}
    for kind, queries in (("all", valid), ("text", valid & ~is_image), ("image", valid & is_image)):
        out[kind] = (float((to_image * queries[:, None]).sum()), int(queries.sum()) * H)
    return out


@torch.no_grad()
def attention_analysis(
    subject: Subject, batches: dict[str, list[dict]], advance: Callable[[], None] | None = None
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Rows {task, layer, query, to_image, to_text, uniform_to_image, queries} and {task: (n_layer,
    T, T) mean map}. uniform_to_image is the share a query would give image keys if it spread its
    attention evenly over the keys it may see: the mask's own share, to read to_image against."""
    rows, maps = [], {}
    for task, task_batches in batches.items():
        mass = {(i, k): [0.0, 0] for i in range(subject.n_layer) for k in QUERY_KINDS}
        uniform = {k: [0.0, 0] for k in QUERY_KINDS}
        T = max(b["ids"].shape[1] for b in task_batches)
        map_sum = torch.zeros(subject.n_layer, T, T)
        query_count = torch.zeros(T)
        for batch in task_batches:
            is_image, valid = batch["is_image"], batch["valid"]
            t = is_image.shape[1]

            def read(i, q, k, mask, attention_probs, head_dim):
                probs = attention_probs().float()
                for kind, (s, n) in image_mass(probs, is_image, valid).items():
                    mass[(i, kind)][0] += s
                    mass[(i, kind)][1] += n
                map_sum[i, :t, :t] += (probs.mean(1) * valid[:, :, None]).sum(0)
                if i == 0:  # the baseline: attention spread evenly over the keys the mask allows
                    allowed = mask.float()
                    for kind, (s, n) in image_mass(allowed / allowed.sum(-1, keepdim=True), is_image, valid).items():
                        uniform[kind][0] += s
                        uniform[kind][1] += n

            with layer_attention(subject, read):
                subject.run(batch)
            query_count[:t] += valid.sum(0)
            if advance:
                advance()
        for (i, kind), (s, n) in mass.items():
            if n:
                u = uniform[kind][0] / uniform[kind][1]
                rows.append(
                    {
                        "task": task,
                        "layer": i,
                        "query": kind,
                        "to_image": s / n,
                        "to_text": 1 - s / n,
                        "uniform_to_image": u,
                        "queries": n,
                    }
                )
        maps[task] = map_sum / query_count.clamp(min=1)[None, :, None]
    return rows, maps


def text_attention_rows(maps: dict[str, torch.Tensor]) -> list[dict]:
    """Where a text-only model's queries look, per task and layer, from the mean attention maps
    (averaged over heads and rows; query 0, which can only see itself, left out): the share on the
    first token (the "attention sink"), on the token itself, on the previous token, and the mean
    distance back to the keys attended to."""
    rows = []
    for task, m in maps.items():
        L, T, _ = m.shape
        q = torch.arange(T)
        distance = (q[:, None] - q[None, :]).clamp(min=0).float()
        for i in range(L):
            p = m[i, 1:]  # (T - 1, T)
            rows.append(
                {
                    "task": task,
                    "layer": i,
                    "to_first": float(p[:, 0].mean()),
                    "to_self": float(p.diagonal(offset=1).mean()),
                    "to_previous": float(p.diagonal(offset=0).mean()),
                    "mean_distance": float((p * distance[1:]).sum(-1).mean()),
                }
            )
    return rows
