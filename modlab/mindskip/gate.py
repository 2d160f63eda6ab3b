"""MindSkip: a gate on each attention sublayer, decided by a tiny zero-initialised router.

    a = g * Attn(LN(x)),   g = step(sigmoid(w . pool(LN(x))) - tau >= 0)   (forward)
    dg/dw = d sigmoid / dw                                                   (backward, straight-through)

Only the attention sublayer is gated; the MLP always runs. The router reads the attention's own
input, the normalised hidden state, so wrapping the attention module is all it takes, for
modlab's CausalLM and for transformers' decoder layers alike. Zero init gives sigmoid = 0.5 =
tau: every gate starts open and the wrapped model starts equal to the base.

Router-Tuning trains the routers on the base model as it is at inference: when any layer is
routed, MindSkip switches off the base's training-time LayerDrop on attention
(`model.attn_layer_drop`, modlab.models.causal_lm) and its dropout. Left on (the model is in
training mode while the routers train), each forward would drop a random 40 % of the attention
sublayers per row: four identical forwards gave four losses, and a dropped sublayer gives its
router no gradient.

Where the model normalises the attention's output before the residual add (Gemma 2 / 3:
x + RMSNorm(Attn(LN(x)))), a gate on the attention's output would be normalised away: RMSNorm(g a)
= RMSNorm(a) for every g > 0, so the open gate's gradient is exactly zero and the router learns
nothing from the LM loss while its gate is open. There the gate multiplies the output norm's
result instead (`GatedOutNorm`): x + g RMSNorm(Attn(LN(x))), what skipping the sublayer removes.

Inference really skips: with sequence granularity a closed gate returns zeros without calling
the attention (no q/k/v/o projections, no KV entry). The decision is made at prefill and held
while decoding (`MindSkip.context(reuse=True)`), so cached and uncached generation agree. With
token granularity every token still needs its keys and values for later tokens, so the
attention runs and its output is masked (no compute saved).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from modlab.errors import ConfigError

OPEN, CLOSED, ROUTED = "open", "closed", "routed"


def masked_mean(h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, T, d) -> (B, d), the mean over valid tokens."""
    if valid is None:
        return h.mean(1)
    w = valid.to(h.dtype)[..., None]
    return (h * w).sum(1) / w.sum(1).clamp(min=1)


def straight_through_gate(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Exactly 0 or 1 in the forward pass; the sigmoid's gradient in the backward pass."""
    p = torch.sigmoid(logits.float())
    hard = (p >= threshold).float()
    return hard + (p - p.detach())


class MindSkipRouter(nn.Module):
    """Linear(d, 1, bias=False), zero-initialised, plus a fixed logit offset `init_logit`.

    With the released zero init (offset 0) every gate starts exactly on the threshold, so the
    sign of the first update, not the evidence of many batches, closes a layer for every row at
    once. A positive offset starts the gates open with a margin: a layer closes only once its
    router has moved the logit past it, i.e. after the signed gradient kept pointing one way."""

    def __init__(self, d_model: int, init_logit: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, 1, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.init_logit = float(init_logit)

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None, granularity: str) -> torch.Tensor:
        """Logits (B,) for sequence granularity (the linear map of the pooled state equals the
        pool of the per-token logits), (B, T) for token granularity."""
        x = masked_mean(h, valid) if granularity == "sequence" else h
        return self.proj(x.to(self.proj.weight.dtype))[..., 0] + self.init_logit


@dataclass
class SkipContext:
    """What the gates need besides the hidden state, set around a forward by MindSkip.context."""

    valid: torch.Tensor | None = None  # (B, T) real tokens (None: all)
    reuse: bool = False  # decoding: reuse the decisions of the prefill


class GatedAttention(nn.Module):
    """Wraps one attention module. Mode `open` calls it unchanged, `closed` never calls it
    (static drop), `routed` gates it with its router."""

    def __init__(
        self,
        attn: nn.Module,
        ctx: SkipContext,
        returns_tuple: bool,
        router: MindSkipRouter | None,
        granularity: str,
        threshold: float,
    ):
        super().__init__()
        self.attn, self.router = attn, router
        self.ctx, self.returns_tuple = ctx, returns_tuple
        self.granularity, self.threshold = granularity, threshold
        self.mode = ROUTED if router is not None else OPEN
        self.held: torch.Tensor | None = None  # (B,) sequence decisions of the last prefill
        # what the held decisions mean for the whole batch ("open", "closed", "mixed"), read once at
        # prefill: decode steps that reuse them branch on it without waiting on the device
        self.held_batch: str | None = None
        self.last_capacity: torch.Tensor | None = None  # differentiable mean gate of the last forward
        self.calls = 0  # attention executions (what skipping saves)
        # set by MindSkip where a norm follows the attention: the gate is applied after that norm
        # (GatedOutNorm takes `pending`, the gate of this forward), not to the attention's output
        self.scale_after_norm = False
        self.pending: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        # transformers passes the hidden state by keyword, modlab's blocks by position
        h = args[0] if args else kwargs["hidden_states"]
        self.last_capacity = None
        self.pending = None
        if self.mode == OPEN:
            return self._run(args, kwargs)
        if self.mode == CLOSED:
            return self._skipped(h)
        reusing = self.ctx.reuse and self.held is not None and self.granularity == "sequence"
        gate = self._gate(h)
        if not self.training and self.granularity == "sequence":
            if not reusing or self.held_batch is None:
                hard = gate.detach()
                self.held_batch = "closed" if not bool(hard.any()) else "open" if bool(hard.all()) else "mixed"
            if self.held_batch == "closed":
                return self._skipped(h)
            if self.held_batch == "open":
                return self._run(args, kwargs)
        return self._scaled(self._run(args, kwargs), gate)

    def _gate(self, h: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        if self.granularity == "sequence":
            if ctx.reuse and self.held is not None:
                gate = self.held
            else:
                gate = straight_through_gate(self.router(h, ctx.valid, "sequence"), self.threshold)
                self.held, self.held_batch = gate.detach(), None
            self.last_capacity = gate.mean()
            return gate
        gate = straight_through_gate(self.router(h, None, "token"), self.threshold)
        valid = ctx.valid if ctx.valid is not None and ctx.valid.shape == gate.shape else None
        self.last_capacity = gate.mean() if valid is None else (gate * valid).sum() / valid.sum().clamp(min=1)
        return gate

    def _run(self, args, kwargs):
        self.calls += 1
        return self.attn(*args, **kwargs)

    def _skipped(self, h: torch.Tensor):
        zeros = torch.zeros_like(h)
        return (zeros, None) if self.returns_tuple else zeros

    def _scaled(self, result, gate: torch.Tensor):
        if self.scale_after_norm:  # GatedOutNorm applies it to the normalised output
            self.pending = gate
            return result
        out = result[0] if self.returns_tuple else result
        g = gate[:, None, None] if gate.dim() == 1 else gate[..., None]
        out = out * g.to(out.dtype)
        return (out, *result[1:]) if self.returns_tuple else out


class GatedOutNorm(nn.Module):
    """Wraps the norm a layer applies to its attention's output (Gemma 2 / 3) and multiplies its
    result by the gate its GatedAttention computed in the same forward (none: unchanged)."""

    def __init__(self, norm: nn.Module, gate: GatedAttention):
        super().__init__()
        self.norm = norm
        self._gate = [gate]  # a plain list: the gate is a module of the model already, not of this one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        gate = self._gate[0]
        g, gate.pending = gate.pending, None
        if g is None:
            return y
        g = g[:, None, None] if g.dim() == 1 else g[..., None]
        return y * g.to(y.dtype)


def freeze_regularisation(lm: nn.Module) -> None:
    """Switch off the frozen base's random training-time regularisation (LayerDrop on attention,
    dropout), so that the routers train on the deterministic model they will gate."""
    for m in lm.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        # modlab's LMBlock.attn_layer_drop and Attention.dropout, transformers' attention_dropout
        for name in ("attn_layer_drop", "dropout", "attention_dropout"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, 0.0)


class MindSkip(nn.Module):
    """Wraps every attention module of `lm` (a CausalLM or HFCausalLM) in a GatedAttention and
    holds the routers of the routed layers (the only parameters Router-Tuning trains)."""

    def __init__(
        self,
        lm: nn.Module,
        layers: list[int],
        granularity: str = "sequence",
        threshold: float = 0.5,
        init_logit: float = 0.0,
    ):
        super().__init__()
        n = lm.n_layer
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ConfigError(f"mindskip layers {bad} out of range: the model has layers 0..{n - 1}")
        self.layers, self.granularity, self.threshold = sorted(layers), granularity, threshold
        self.always_runs = frozenset(getattr(lm, "always_runs", ()))
        self.routers = nn.ModuleDict({str(i): MindSkipRouter(lm.d_model, init_logit) for i in self.layers})
        self.ctx = SkipContext()
        gates = []
        for i, (parent, name) in enumerate(lm.attention_slots()):
            gate = GatedAttention(
                getattr(parent, name),
                self.ctx,
                lm.attention_returns_tuple,
                self.routers[str(i)] if i in self.layers else None,
                granularity,
                threshold,
            )
            gate.train(parent.training)  # a new module starts in training mode; follow the model
            setattr(parent, name, gate)
            gates.append(gate)
        self.gates = gates  # a plain list, not submodules: the wrappers live in the model
        out_norms = lm.attention_out_norm_slots()
        for i in self.layers if out_norms else ():  # the gate goes after the attention's output norm
            parent, name = out_norms[i]
            gates[i].scale_after_norm = True
            setattr(parent, name, GatedOutNorm(getattr(parent, name), gates[i]))
        if self.layers:
            freeze_regularisation(lm)

    # ---- what runs ------------------------------------------------------------------------------

    @contextmanager
    def context(self, valid: torch.Tensor | None = None, reuse: bool = False):
        """Around a forward: the batch's valid tokens, and whether to reuse prefill decisions."""
        old = (self.ctx.valid, self.ctx.reuse)
        self.ctx.valid, self.ctx.reuse = valid, reuse
        try:
            yield
        finally:
            self.ctx.valid, self.ctx.reuse = old

    @contextmanager
    def variant(self, routers: bool = True, closed=()):
        """Run as the routed model (routers=True), the base model (routers=False, nothing
        closed) or a static drop (routers=False, closed=layers whose attention never runs)."""
        closed = set(closed)
        bad = sorted(closed & self.always_runs)
        if bad:
            raise ConfigError(f"layers {bad} cannot be dropped in this model (its KV cache needs them)")
        old = [g.mode for g in self.gates]
        for i, g in enumerate(self.gates):
            g.mode = CLOSED if i in closed else ROUTED if routers and g.router is not None else OPEN
        try:
            yield
        finally:
            for g, m in zip(self.gates, old):
                g.mode = m

    # ---- what it did ----------------------------------------------------------------------------

    def capacity(self) -> torch.Tensor:
        """Mean gate over the routed layers in the last forward (differentiable; 1.0 if none ran)."""
        caps = [self.gates[i].last_capacity for i in self.layers if self.gates[i].last_capacity is not None]
        return torch.stack(caps).mean() if caps else torch.tensor(1.0)

    def capacity_weight(self, valid: torch.Tensor) -> float:
        """What capacity() of a forward over a batch with these `valid` tokens (B, T) averages over,
        to weight it in a mean over batches: its rows (sequence granularity: one gate per row) or
        its valid tokens (token granularity)."""
        return float(valid.shape[0]) if self.granularity == "sequence" else float(valid.sum())

    def layer_capacity(self) -> dict[int, float]:
        return {i: float(self.gates[i].last_capacity) for i in self.layers if self.gates[i].last_capacity is not None}

    def open_layers(self) -> list[bool]:
        """Per layer, whether its attention runs for row 0 after the last prefill (batch-1
        inference, the speed measurement)."""
        out = []
        for g in self.gates:
            if g.mode == ROUTED and self.granularity == "sequence" and g.held is not None:
                out.append(bool(g.held[0] > 0))
            else:
                out.append(g.mode != CLOSED)
        return out

    def attention_calls(self) -> list[int]:
        return [g.calls for g in self.gates]

    # ---- the routers alone ----------------------------------------------------------------------

    def router_state(self) -> dict[str, torch.Tensor]:
        return {f"layers.{i}.weight": r.proj.weight.detach().cpu().contiguous() for i, r in self.routers.items()}

    def load_router_state(self, state: dict[str, torch.Tensor]) -> None:
        ours = self.router_state()
        if set(state) != set(ours):
            raise ConfigError(f"router weights are for layers {sorted(state)}, this model routes {sorted(ours)}")
        for key, value in state.items():
            if value.shape != ours[key].shape:
                raise ConfigError(
                    f"router {key} has shape {tuple(value.shape)}, the model needs {tuple(ours[key].shape)}"
                )
            layer = key.split(".")[1]
            with torch.no_grad():
                self.routers[layer].proj.weight.copy_(value)
