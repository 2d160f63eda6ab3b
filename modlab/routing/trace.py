"""What routed layers did in a forward, as plain data: `record_routing(model)`.

    with record_routing(model) as trace:
        logits = model(...)
    trace.kept_fractions()    # per layer and task: tokens that ran / valid tokens, beside the target
    trace.causal_stats()      # the causal decision's BCE (with its graph) and agreement with top-k
    trace.flops_groups()      # per layer: the (rows, K) batched calls that ran (modlab.flops)
    trace.router_state()      # the routers' logits, weight gradients, decision vs top-k (metrics)

Every routed layer (modlab's RoutedBlock, the Hugging Face HFRoutedLayer) appends one
`LayerRouting` per call to every trace open on it; nothing is kept on the layers between
forwards. `counts_only=True` keeps only the running kept / valid counts per (layer, task, mode),
for traces that stay open over many forwards (a whole test epoch of decoding).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class LayerRouting:
    """One call of one routed layer."""

    layer: int  # the layer's index in its model (-1: a block routed on its own)
    mode: str  # "topk" or "threshold" (causal decoding)
    task: torch.Tensor  # (B,) each row's task id
    valid: torch.Tensor  # (B, T) tokens that could run
    selected: torch.Tensor  # (B, T) tokens that ran
    capacity: torch.Tensor  # (B,) each row's target capacity (1: a task dense in this layer)
    groups: list[tuple[int, int]]  # (rows, K) of each batched call: what really ran (FLOPs)
    router_weights: int  # weights applied to every token to decide (FLOPs)
    aux_loss: torch.Tensor | None = None  # BCE of the causal decision vs top-k (routed rows)
    agreement: torch.Tensor | None = None  # how often the decision agrees with top-k (routed rows)
    # top-k calls, over the valid routed tokens of routed rows (detached): the router's logits, the
    # gradient of the router weight in them (d w / d s), and with a causal decision the counts
    # [routed tokens, selected by top-k, decided (logit > 0), both]
    router_logits: torch.Tensor | None = None
    weight_gradient: torch.Tensor | None = None
    decision_counts: torch.Tensor | None = None

    @property
    def kept(self) -> torch.Tensor:
        """(B,) tokens that ran per row."""
        return self.selected.sum(1)


class RoutingTrace:
    def __init__(self, counts_only: bool = False):
        self.counts_only = counts_only
        self.records: list[LayerRouting] = []
        self._counts: dict[tuple[int, int, str], list[float]] = {}

    def add(self, r: LayerRouting) -> None:
        if self.counts_only:
            _count(self._counts, r)  # reads values back from the device: only for long-open traces
        else:
            self.records.append(r)  # no device sync in a training step

    @property
    def counts(self) -> dict[tuple[int, int, str], list[float]]:
        """(layer, task, mode) -> [tokens that ran, valid tokens, target capacity], over every call."""
        if self.counts_only:
            return self._counts
        counts: dict[tuple[int, int, str], list[float]] = {}
        for r in self.records:
            _count(counts, r)
        return counts

    def layer(self, index: int) -> list[LayerRouting]:
        return [r for r in self.records if r.layer == index]

    def last(self) -> LayerRouting:
        return self.records[-1]

    def causal_stats(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The causal decision's BCE and its agreement with top-k, averaged over the recorded calls
        that saw routed tokens: (None, None) if no layer learns a decision; (a zero that keeps the
        graph, None) if none saw a routed token (e.g. a batch of a task dense everywhere). A call
        without routed tokens adds its zero loss but does not dilute the mean."""
        learned = [r for r in self.records if r.aux_loss is not None]
        if not learned:
            return None, None
        routed = [r for r in learned if r.agreement is not None]
        zero = sum(r.aux_loss for r in learned if r.agreement is None)
        if not routed:
            return zero, None
        aux = torch.stack([r.aux_loss for r in routed]).mean() + zero
        return aux, torch.stack([r.agreement for r in routed]).mean()

    def router_state(self) -> RouterState:
        """The router logits, weight gradients and decision counts of every recorded top-k call."""
        state = RouterState()
        for r in self.records:
            state.add(r)
        return state

    def flops_groups(self) -> tuple[dict[int, list[tuple[int, int]]], dict[int, int]]:
        """({layer: (rows, K) calls}, {layer: router weights}) of the recorded forward(s)."""
        groups: dict[int, list[tuple[int, int]]] = {}
        weights: dict[int, int] = {}
        for r in self.records:
            groups.setdefault(r.layer, []).extend(r.groups)
            weights[r.layer] = r.router_weights
        return groups, weights

    def kept_fractions(self, mode: str | None = None, routed_only: bool = True) -> list[dict]:
        """One dict per (layer, task[, mode]) seen: kept (tokens that ran / valid tokens), capacity
        (the target), tokens (valid tokens counted). `routed_only`: leave out tasks dense there."""
        out = []
        for (layer, task, m), (ran, valid, cap) in sorted(self.counts.items()):
            if (mode is None or m == mode) and valid > 0 and not (routed_only and cap >= 1.0):
                out.append(
                    {"layer": layer, "task": task, "mode": m, "kept": ran / valid, "capacity": cap, "tokens": valid}
                )
        return out


WEIGHT_GRADIENT_SMALL = 0.01  # d w / d s below it: the router barely learns from that token (sigmoid'(4.6))


@dataclass
class RouterState:
    """What the routers' learning depends on, pooled over calls (layers, task batches) in one step:
    `metrics()` names it. Medians and shares are over tokens, the decision's rates over the tokens
    they count (pooled counts, not a mean of per-call rates)."""

    logits: list[torch.Tensor] | None = None
    gradients: list[torch.Tensor] | None = None
    counts: torch.Tensor | None = None  # [routed, selected by top-k, decided, both]

    def add(self, r: LayerRouting) -> None:
        if r.router_logits is not None and r.router_logits.numel():
            self.logits = [*(self.logits or []), r.router_logits]
            self.gradients = [*(self.gradients or []), r.weight_gradient]
        if r.decision_counts is not None:
            self.counts = r.decision_counts if self.counts is None else self.counts + r.decision_counts

    def merge(self, other: RouterState) -> RouterState:
        if other.logits:
            self.logits = [*(self.logits or []), *other.logits]
            self.gradients = [*(self.gradients or []), *other.gradients]
        if other.counts is not None:
            self.counts = other.counts if self.counts is None else self.counts + other.counts
        return self

    def metrics(self) -> dict[str, torch.Tensor]:
        """router_logit_abs_median (the logits' scale), router_weight_grad_median and
        router_weight_grad_small (share of tokens with d w / d s < 0.01: a saturated router), and
        with a causal decision router_recall (of top-k's tokens, the share the decision runs),
        router_decision_kept (share of routed tokens the decision runs) beside router_topk_kept."""
        out = {}
        if self.logits:
            s, g = torch.cat(self.logits), torch.cat(self.gradients)
            out["router_logit_abs_median"] = s.abs().median()
            out["router_weight_grad_median"] = g.median()
            out["router_weight_grad_small"] = (g < WEIGHT_GRADIENT_SMALL).float().mean()
        if self.counts is not None and bool(self.counts[0] > 0):
            routed, top, decided, both = self.counts
            out["router_recall"] = both / top.clamp(min=1)
            out["router_decision_kept"] = decided / routed
            out["router_topk_kept"] = top / routed
        return out


def _count(counts: dict, r: LayerRouting) -> None:
    ran, valid = r.selected.sum(1).double(), r.valid.sum(1).double()
    for t in r.task.unique().tolist():
        rows = r.task == t
        c = counts.setdefault((r.layer, int(t), r.mode), [0.0, 0.0, float(r.capacity[rows][0])])
        c[0] += float(ran[rows].sum())
        c[1] += float(valid[rows].sum())


def routed_layers(model: nn.Module) -> list[nn.Module]:
    """Every module of `model` that records its routing (RoutedBlock and its subclasses)."""
    return [m for m in model.modules() if hasattr(m, "routing_traces")]


def start_recording(model: nn.Module, counts_only: bool = False) -> RoutingTrace:
    trace = RoutingTrace(counts_only)
    for layer in routed_layers(model):
        layer.routing_traces.append(trace)
    return trace


def stop_recording(model: nn.Module, trace: RoutingTrace) -> RoutingTrace:
    for layer in routed_layers(model):
        if trace in layer.routing_traces:
            layer.routing_traces.remove(trace)
    return trace


@contextmanager
def record_routing(model: nn.Module, counts_only: bool = False) -> Iterator[RoutingTrace]:
    """A RoutingTrace of every routed layer of `model` while the block runs (traces nest)."""
    trace = start_recording(model, counts_only)
    try:
        yield trace
    finally:
        stop_recording(model, trace)
