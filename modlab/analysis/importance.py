"""Layer importance, two ways.

(a) Drop one layer at evaluation (its delta becomes zero: the residual stream skips it) and
    measure every task's loss and metric; the model is restored afterwards, even on error.
(b) LLM-Drop (He et al. 2024): importance of a sublayer = 1 - cos(x, x + F(LN(x))), the angle by
    which it turns the residual stream, averaged over valid calibration tokens. Computed for the
    attention sublayer (x: the layer input), the MLP sublayer (x: after attention) and the whole
    block. Routed layers are measured as if every token ran them. Needs only the blocks, so it
    applies to LMs as well (MindSkip's baseline picks the least important attention sublayers).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.analysis.subject import Subject, layer_inputs

SUBLAYERS = ("attn", "mlp", "block")


def turn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos(x, y) per token (B, T), in fp32."""
    return 1.0 - F.cosine_similarity(x.float(), y.float(), dim=-1)


@torch.no_grad()
def llm_drop_importance(subject: Subject, batches: dict[str, list[dict]],
                        advance: Callable[[], None] | None = None) -> list[dict]:
    """Rows {task, layer, sublayer, importance} (mean 1 - cos over valid tokens)."""
    out = []
    for task, task_batches in batches.items():
        sums = torch.zeros(subject.n_layer, len(SUBLAYERS), dtype=torch.float64)
        count = 0
        for batch in task_batches:
            valid = batch["valid"]

            def read(i, block, x, positions, mask):
                after_attn = x + block.attn(block.norm_attn(x), positions, mask)
                after_mlp = after_attn + block.mlp(block.norm_mlp(after_attn))
                for j, (a, b) in enumerate(((x, after_attn), (after_attn, after_mlp), (x, after_mlp))):
                    sums[i, j] += float((turn(a, b) * valid).sum())

            with layer_inputs(subject.blocks, read):
                subject.run(batch)
            count += int(valid.sum())
            if advance:
                advance()
        for i in range(subject.n_layer):
            for j, name in enumerate(SUBLAYERS):
                out.append({"task": task, "layer": i, "sublayer": name, "importance": float(sums[i, j] / count)})
    return out


class SkippedLayer(nn.Module):
    """Stands in for a dropped layer: a zero delta, so the residual stream passes unchanged."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(x)


@contextmanager
def skip_layer(blocks: nn.ModuleList, layer: int | None) -> Iterator[None]:
    """Run without `layer` (None: the full model); the original layer is put back on exit."""
    if layer is None:
        yield
        return
    original = blocks[layer]
    blocks[layer] = SkippedLayer()
    try:
        yield
    finally:
        blocks[layer] = original


@torch.no_grad()
def mean_task_losses(subject: Subject, batches: dict[str, list[dict]], seed: int = 0) -> dict[str, float]:
    """Each task's loss over its calibration batches (row-weighted), with fixed randomness."""
    out = {}
    for task, task_batches in batches.items():
        g = torch.Generator().manual_seed(seed)
        total, rows = 0.0, 0
        for batch in task_batches:
            total += float(subject.task_losses(batch, g)[task]) * len(batch["ids"])
            rows += len(batch["ids"])
        out[task] = total / rows
    return out


def drop_layer_importance(subject: Subject, batches: dict[str, list[dict]],
                          metrics: dict[str, Callable[[], float]] | None = None, seed: int = 0,
                          advance: Callable[[], None] | None = None) -> list[dict]:
    """Rows {dropped, task, loss} and {dropped, task, metric, value} for the full model
    (dropped = -1) and with each layer dropped in turn. `metrics`: name -> a callable that
    scores the current model (e.g. MMU answer accuracy); each is run under every drop."""
    out = []
    for layer in [None, *range(subject.n_layer)]:
        dropped = -1 if layer is None else layer
        with skip_layer(subject.blocks, layer):
            for task, loss in mean_task_losses(subject, batches, seed).items():
                out.append({"dropped": dropped, "task": task, "metric": "loss", "value": loss})
            for name, fn in (metrics or {}).items():
                out.append({"dropped": dropped, "task": name.split("_")[0], "metric": name, "value": float(fn())})
        if advance:
            advance()
    return out
