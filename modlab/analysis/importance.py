"""Layer importance, two ways.

(a) Drop one layer at evaluation (its delta becomes zero: the residual stream skips it) and
    measure every task's loss and metric; the model is restored afterwards, even on error.
(b) LLM-Drop (He et al. 2024): importance of a sublayer = 1 - cos(x, x + F(LN(x))), the angle by
    which it turns the residual stream, averaged over valid calibration tokens. Computed for the
    attention sublayer (x: the layer input), the MLP sublayer (x: after attention) and the whole
    block. Routed layers are measured as if every token ran them. Needs only each layer's two
    residual branches (`Subject.sublayers`), so it applies to causal LMs, Hugging Face ones
    included; MindSkip's static baseline (modlab.mindskip.static_drop) is this score of the
    attention sublayers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.analysis.subject import Subject, Sublayers, layer_sublayers

SUBLAYERS = ("attn", "mlp", "block")


def turn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos(x, y) per token (B, T), in fp32."""
    return 1.0 - F.cosine_similarity(x.float(), y.float(), dim=-1)


@torch.no_grad()
def llm_drop_importance(
    subject: Subject, batches: dict[str, list[dict]], advance: Callable[[], None] | None = None
) -> list[dict]:
    """Rows {task, layer, sublayer, importance} (mean 1 - cos over valid tokens; a batch
    without `valid` counts every token)."""
    out = []
    for task, task_batches in batches.items():
        sums = torch.zeros(subject.n_layer, len(SUBLAYERS), dtype=torch.float64)
        count = 0
        for batch in task_batches:
            valid = batch.get("valid")
            if valid is None:
                valid = torch.ones(batch["ids"].shape, dtype=torch.bool)

            def read(i: int, s: Sublayers) -> None:
                after_attn = s.x + s.attn(s.x)
                after_mlp = after_attn + s.mlp(after_attn)
                for j, (a, b) in enumerate(((s.x, after_attn), (after_attn, after_mlp), (s.x, after_mlp))):
                    sums[i, j] += float((turn(a, b) * valid).sum())

            with layer_sublayers(subject, read):
                subject.run(batch)
            count += int(valid.sum())
            if advance:
                advance()
        for i in range(subject.n_layer):
            for j, name in enumerate(SUBLAYERS):
                out.append({"task": task, "layer": i, "sublayer": name, "importance": float(sums[i, j] / count)})
    return out


class SkippedLayer(nn.Module):
    """Stands in for a dropped layer, so the residual stream passes unchanged: a zero delta for
    modlab's blocks, the input itself for layers that return the stream (transformers), as a
    one-tuple for layers that return tuples (Chameleon: its model loop reads output[0])."""

    def __init__(self, returns_stream: bool = False, returns_tuple: bool = False):
        super().__init__()
        self.returns_stream, self.returns_tuple = returns_stream, returns_tuple

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        out = x if self.returns_stream else torch.zeros_like(x)
        return (out,) if self.returns_tuple else out


@contextmanager
def skip_layer(
    blocks: nn.ModuleList, layer: int | None, returns_stream: bool = False, returns_tuple: bool = False
) -> Iterator[None]:
    """Run without `layer` (None: the full model); the original layer is put back on exit."""
    if layer is None:
        yield
        return
    original = blocks[layer]
    blocks[layer] = SkippedLayer(returns_stream, returns_tuple)
    try:
        yield
    finally:
        blocks[layer] = original


@torch.no_grad()
def mean_task_losses(
    subject: Subject, batches: dict[str, list[dict]], seed: int = 0, advance: Callable[[], None] | None = None
) -> dict[str, float]:
    """Each task's loss over its calibration batches (row-weighted), with fixed randomness;
    `advance` is called after each batch."""
    out = {}
    for task, task_batches in batches.items():
        g = torch.Generator().manual_seed(seed)
        total, rows = 0.0, 0
        for batch in task_batches:
            total += float(subject.task_losses(batch, g)[task]) * len(batch["ids"])
            rows += len(batch["ids"])
            if advance:
                advance()
        out[task] = total / rows
    return out


REPLAY_BYTES = 1 << 30  # the most the full model's layer outputs may take to be replayed


class ReplayLayer(nn.Module):
    """Stands in for a layer *before* the dropped one: returns, call by call, what the layer
    returned in the full model's pass over the same batches (same inputs, same outputs), so a
    drop pass computes only the layers from the dropped one on: about half the work."""

    def __init__(self, outputs: list):
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, *args, **kwargs):
        out = self.outputs[self.calls]
        self.calls += 1
        return out


@contextmanager
def recorded_outputs(blocks: nn.ModuleList) -> Iterator[list[list] | None]:
    """While active, each layer's outputs in call order; the list is None after the pass if they
    took more than REPLAY_BYTES (nothing is replayed then)."""
    outputs: list[list] = [[] for _ in blocks]
    size = [0]

    def keep(i):
        def hook(module, args, out):
            outputs[i].append(out)
            size[0] += sum(t.numel() * t.element_size() for t in (out if isinstance(out, tuple) else (out,)))

        return hook

    handles = [b.register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
    box = [outputs]
    try:
        yield box
    finally:
        for h in handles:
            h.remove()
        if size[0] > REPLAY_BYTES:
            box[0] = None


@contextmanager
def replaying(blocks: nn.ModuleList, outputs: list[list] | None, layer: int) -> Iterator[None]:
    """Layers before `layer` replay their recorded outputs (nothing when outputs is None)."""
    if outputs is None:
        yield
        return
    originals = [blocks[j] for j in range(layer)]
    for j in range(layer):
        blocks[j] = ReplayLayer(outputs[j])
    try:
        yield
    finally:
        for j, original in enumerate(originals):
            blocks[j] = original


def drop_layer_importance(
    subject: Subject,
    batches: dict[str, list[dict]],
    metrics: dict[str, Callable[[], float]] | None = None,
    seed: int = 0,
    advance: Callable[[], None] | None = None,
) -> list[dict]:
    """Rows {dropped, task, loss} and {dropped, task, metric, value} for the full model
    (dropped = -1) and with each layer dropped in turn. `metrics`: name -> a callable that
    scores the current model (e.g. MMU answer accuracy); each is run under every drop.
    `advance` is called after each calibration batch of each pass ((n_layer + 1) x batches).

    Without metrics the layers before the dropped one replay their outputs of the full pass
    (ReplayLayer): the losses are the same, computed with about half the layer work. Metrics
    (sampling, answering) call the model in other ways, so with them every pass runs in full."""
    out = []
    with recorded_outputs(subject.blocks) if not metrics else nullcontext([None]) as recorded:
        losses = mean_task_losses(subject, batches, seed, advance)
        for name, fn in (metrics or {}).items():
            out.append({"dropped": -1, "task": name.split("_")[0], "metric": name, "value": float(fn())})
    out[:0] = [{"dropped": -1, "task": t, "metric": "loss", "value": v} for t, v in losses.items()]
    n_calls = sum(map(len, batches.values()))
    if recorded[0] is not None and any(len(o) != n_calls for o in recorded[0]):
        # some layer was not called through subject.blocks once per batch (a routed layer swapped
        # for its block while the analysis runs): nothing to replay, every pass runs in full
        recorded[0] = None
    for layer in range(subject.n_layer):
        with (
            replaying(subject.blocks, recorded[0], layer),
            skip_layer(subject.blocks, layer, subject.returns_stream, subject.layer_returns_tuple),
        ):
            for task, loss in mean_task_losses(subject, batches, seed, advance).items():
                out.append({"dropped": layer, "task": task, "metric": "loss", "value": loss})
            for name, fn in (metrics or {}).items():
                out.append({"dropped": layer, "task": name.split("_")[0], "metric": name, "value": float(fn())})
    return out
