"""The routed block (Mixture-of-Depths, and UniMoD's task-aware form).

Each row keeps its k = ceil(C * n_eligible) highest-scoring eligible tokens; only those run the
wrapped block (attention among themselves + MLP), the rest pass through unchanged:

    x_i + w_i * f(x_sel)_i   for kept tokens,      x_i   otherwise.

Which weight w scales the delta, and why: by default the *straight-through sigmoid*
w = (sigmoid(s) - stopgrad(sigmoid(s))) + 1. Its forward value is exactly 1, so a routed model at
C = 1 is the dense model bit for bit and a dense checkpoint fine-tunes from its own function
(UniMoD's protocol); its gradient is the sigmoid's, dL/ds = sigmoid'(s) * <dL/dy_i, f(x)_i>, so the
router learns which tokens gain from the block (MoD's reason for putting r on the path).
`weight="sigmoid"` uses w = sigmoid(s) in the forward pass too (at the price of C = 1 no longer
being the dense block); `weight="logit"` is the MoD paper's own r * f(x) with the raw logit, and
`weight="ste_logit"` its gradient with a forward value of 1: dL/ds = <dL/dy_i, f(x)_i>, no sigmoid'
that vanishes as |s| grows. `temperature` T reads sigmoid(s / T); `router_input="norm"` scores the
layer-normalised stream; `aux_margin` stops the aux BCE pushing logits already right by more than it.

Causal inference. Top-k over a row sees the whole row, so it cannot be used while decoding token by
token. With `causal="aux_bce"` (MoD's auxiliary loss) the router's own logits are trained with a
BCE loss to be > 0 exactly for the tokens top-k selected; with `causal="predictor"` a small MLP
on the stop-gradient hidden state learns the same decision and the router is left alone. In
`mode="threshold"` (decoding) each token runs the block iff that logit is > 0: a decision that
depends on the token's own hidden state only, hence causal. Rows whose capacity in this layer is
1.0 (a task that is dense here, e.g. LM rows of a UniMoD layer that routes MMU only) ran every
token under top-k, so they run every token under threshold routing too: no logit decides for
them, and neither the causal loss nor its agreement with top-k counts their tokens. How often
the threshold decision equals top-k's over the *routed* tokens is worth watching: it is what
decoding relies on.

What a call did (tokens kept per row and task, the batched calls, the causal loss and
agreement) is recorded in every open trace (modlab.routing.trace.record_routing); nothing is
kept on the block between forwards. `route` is the decision itself, shared with the Hugging Face
routed layer (modlab.routing.hf_routed_layer), which only runs the kept tokens differently.

Rows are handled in one batched gather / scatter: the kept indices are sorted (causal order is
preserved), their *original* positions are gathered for RoPE, and the attention mask is sliced on
rows and columns, so omni-attention semantics hold among the kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.errors import ConfigError
from modlab.routing.config import CAUSAL_MODES, ROUTER_INPUTS, ROUTER_WEIGHTS
from modlab.routing.router import RoutingPredictor, TaskRouter
from modlab.routing.schedule import annealed_capacity
from modlab.routing.topk import topk_select
from modlab.routing.trace import LayerRouting


@dataclass
class RouteInfo:
    """What a routed block needs to know about the batch besides the hidden states."""

    task: torch.Tensor  # (B,) task id of each row
    valid: torch.Tensor  # (B, T) tokens that may be selected (padding never is)
    # (B, T) valid tokens that are not routed but always run (which tokens a run routes is
    # configurable, e.g. image tokens only); None: every valid token is routed
    always: torch.Tensor | None = None

    def routed(self) -> torch.Tensor:
        """(B, T) the tokens the router decides for."""
        return self.valid if self.always is None else self.valid & ~self.always


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) at idx (B, K) -> (B, K, ...)."""
    shape = idx.shape + x.shape[2:]
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(shape))


def slice_mask(mask: torch.Tensor, idx: torch.Tensor, slot_ok: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) attention mask restricted to the kept tokens, (B, 1, K, K). Unused slots are
    never attended to; every slot still sees itself (no empty softmax rows)."""
    B, K = idx.shape
    T = mask.shape[-1]
    rows = mask.gather(2, idx[:, None, :, None].expand(B, 1, K, T))
    sub = rows.gather(3, idx[:, None, None, :].expand(B, 1, K, K))
    sub = sub & slot_ok[:, None, None, :]
    return sub | torch.eye(K, dtype=torch.bool, device=mask.device)


class RoutedBlock(nn.Module):
    """Wraps a block that returns its delta f(x); returns the routed delta (zeros where skipped).

    `capacity` holds one capacity per router: a single entry is MoD (every row, one router); one
    per task id is UniMoD. A capacity of 1.0 runs every eligible token of that task."""

    def __init__(
        self,
        block: nn.Module,
        d_model: int,
        capacity: list[float],
        weight: str = "ste_sigmoid",
        causal: str = "none",
        *,
        temperature: float = 1.0,
        router_input: str = "raw",
        aux_margin: float | None = None,
    ):
        super().__init__()
        if weight not in ROUTER_WEIGHTS:
            raise ValueError(f"router weight '{weight}' is unknown ({', '.join(ROUTER_WEIGHTS)})")
        if causal not in CAUSAL_MODES:
            raise ValueError(f"causal routing '{causal}' is unknown ({', '.join(CAUSAL_MODES)})")
        if router_input not in ROUTER_INPUTS:
            raise ValueError(f"router input '{router_input}' is unknown ({', '.join(ROUTER_INPUTS)})")
        self.block = block
        self.router = TaskRouter(d_model, n_routers=len(capacity), normalise=router_input == "norm")
        self.predictor = RoutingPredictor(d_model, n_routers=len(capacity)) if causal == "predictor" else None
        self.register_buffer("capacity", torch.tensor(capacity, dtype=torch.float32), persistent=False)
        self.weight, self.causal = weight, causal
        self.temperature, self.aux_margin = temperature, aux_margin
        self.mode = "topk"  # "threshold" while decoding (needs causal != "none"); see install.threshold_routing
        self.anneal = 1.0  # training-time capacity schedule (modlab.routing.schedule); eval: target
        self.layer_index = -1  # set when installed into a model (the index the traces report)
        self.routing_traces: list = []  # open RoutingTraces (modlab.routing.trace.record_routing)

    def routing_weights(self) -> int:
        """Weights applied to every token to decide the routing (for FLOPs accounting)."""
        mods = [self.router] + ([self.predictor] if self.predictor is not None else [])
        return sum(p.numel() for m in mods for p in m.parameters())

    def weight_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """What the router weight is a function of: the logits over `routing.temperature` (fp32)."""
        s = scores.float()
        return s if self.temperature == 1.0 else s / self.temperature

    def router_weight(self, scores: torch.Tensor) -> torch.Tensor:
        """w of x + w * f(x) from the router's logits: sigmoid(s / T) or MoD's s / T itself;
        straight-through (ste_*) it is exactly 1 in the forward pass ((g - g) is exactly 0) with
        g's gradient backward."""
        s = self.weight_logits(scores)
        g = torch.sigmoid(s) if self.weight.endswith("sigmoid") else s
        return (g - g.detach()) + 1.0 if self.weight.startswith("ste_") else g

    def weight_gradient(self, scores: torch.Tensor) -> torch.Tensor:
        """d w / d s per token (without the task gradient <dL/dy, f(x)> it multiplies): sigmoid'(s / T) / T
        for the sigmoid weights, 1 / T for the logit ones. What a saturated router loses."""
        s = self.weight_logits(scores)
        if not self.weight.endswith("sigmoid"):
            return torch.full_like(s, 1.0 / self.temperature)
        g = torch.sigmoid(s)
        return g * (1 - g) / self.temperature

    def decision_logits(self, x: torch.Tensor, task: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The causal routing decision's logits: > 0 means "run the block" at decoding time."""
        return scores if self.predictor is None else self.predictor(x.detach(), task)

    def row_capacity(self, task: torch.Tensor, capacity: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the capacity of each row's router (a task id past the last router uses the last)."""
        capacity = self.capacity if capacity is None else capacity
        return capacity[task.clamp(max=len(capacity) - 1)]

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor, route, cache=None
    ) -> torch.Tensor:
        """`cache` (a modlab.models.kv_cache.LayerKV): decoding, where only the tokens that run
        the block store K/V, and they attend to the earlier tokens that ran it."""
        if cache is not None:
            self.require_causal_decision()
        scores = self.router(x, route.task)  # (B, T) logits
        if cache is not None and x.shape[1] == 1:
            return self._decode_step(x, positions, attn_mask, route, scores, cache)

        def run_rows(rows, eligible, capacity, forced=None):
            if rows is None:  # every row in one call: the only call threshold routing (and a cache) makes
                return self._route_rows(x, positions, attn_mask, eligible, scores, capacity, route.task, cache, forced)
            return self._route_rows(
                x[rows],
                positions[rows],
                attn_mask[rows],
                eligible,
                scores[rows],
                capacity,
                route.task[rows],
                None,
                forced,
            )

        return self.route(x, route, scores, run_rows, torch.zeros_like(x))

    def require_causal_decision(self) -> None:
        """Decoding with a KV cache needs threshold routing: top-k would let later tokens change
        which earlier ones ran, and their entries are already written."""
        if not (self.mode == "threshold" and self.causal != "none"):
            raise ConfigError(
                "top-k routing sees the whole sequence and cannot decode with a KV cache; "
                "decode under threshold_routing with causal=aux_bce or predictor"
            )

    def route(self, x: torch.Tensor, route, scores: torch.Tensor, run_rows, empty_out: torch.Tensor, one_call=False):
        """Which tokens run the layer, and running it: the decision every routed layer shares.

        `run_rows(rows, eligible, capacity, forced)` runs the wrapped layer on the top-k eligible
        tokens of those rows (rows None: all) plus their `forced` ones (route.always), and returns
        (out, selected (rows, T), K of its call);
        `empty_out` is what rows that run nothing return (zeros for a delta, x for a stream).
        `one_call`: every row in one batched call even when tasks differ in capacity."""
        groups: list[tuple[int, int]] = []
        aux = agreement = None
        if self.mode == "threshold" and self.causal != "none":
            eligible = self.threshold_runs(x, route, scores)
            out, selected, k = run_rows(None, eligible, torch.ones((), device=x.device), route.always)
            groups.append((x.shape[0], k))
            mode = "threshold"
        else:
            mode = "topk"
            capacity = self.capacity
            if self.training and self.anneal < 1.0:
                capacity = annealed_capacity(capacity, self.anneal)
            row_capacity = self.row_capacity(route.task, capacity)
            always = route.always
            if one_call or len(row_capacity.unique()) == 1:  # MoD, or one capacity for all rows: one call
                out, selected, k = run_rows(None, route.valid, row_capacity, always)
                groups.append((x.shape[0], k))
            else:
                # Task routers with different capacities: the rows of each task go through together.
                # Rows of one task keep similar k, so the batched K = max k wastes little; mixing tasks
                # (e.g. dense LM rows with MMU rows at 0.2) would make every row pay for the largest k.
                out, selected = empty_out, torch.zeros_like(route.valid)
                for t in route.task.unique().tolist():
                    rows = (route.task == t).nonzero().squeeze(1)
                    forced = always[rows] if always is not None else None
                    out[rows], selected[rows], k = run_rows(rows, route.valid[rows], row_capacity[rows], forced)
                    groups.append((len(rows), k))
            if self.causal != "none":
                aux, agreement = self._score_causal_decision(x, route, scores, selected)
        self._trace(mode, route, selected, groups, aux, agreement, x, scores)
        return out

    def threshold_runs(self, x: torch.Tensor, route, scores: torch.Tensor) -> torch.Tensor:
        """(B, T) the tokens threshold routing runs: every token whose decision logit is > 0 (a
        per-token, causal choice); rows of a task that is dense in this layer (capacity 1) run
        all their tokens, and so do the tokens that are not routed (route.always)."""
        decided = self.decision_logits(x, route.task, scores).detach() > 0
        if self._has_dense_task():
            decided = decided | (self.row_capacity(route.task) >= 1.0)[:, None]
        runs = route.valid & decided
        if route.always is not None:
            runs |= route.valid & route.always
        return runs

    def _has_dense_task(self) -> bool:
        """Whether some router's capacity is 1 (its task runs every token here), read on the host
        once per capacity tensor: a decode step asks at every layer and must not wait on the device."""
        key = (self.capacity.data_ptr(), self.capacity.device)
        if getattr(self, "_dense_task_key", None) != key:
            self._dense_task_key, self._dense_task = key, bool((self.capacity >= 1.0).any())
        return self._dense_task

    def _trace(self, mode, route, selected, groups, aux=None, agreement=None, x=None, scores=None) -> None:
        if not self.routing_traces:
            return

        routed = route.routed()  # kept fractions are over the tokens the router decides for
        record = LayerRouting(
            self.layer_index,
            mode,
            route.task,
            routed,
            selected & routed,
            self.row_capacity(route.task),
            groups,
            self.routing_weights(),
            aux,
            agreement,
        )
        if mode == "topk" and x is not None:
            self._record_router_state(record, x, route, scores, selected)
        for trace in self.routing_traces:
            trace.add(record)

    def _decode_step(self, x, positions, attn_mask, route, scores, cache) -> torch.Tensor:
        """One token per row with a KV cache (threshold routing): the rows whose token runs the
        block run it, and only they; the others' delta is 0 and they write nothing. One decision
        for the batch: the rows that run are the single host sync (it sizes the call)."""
        runs = self.threshold_runs(x, route, scores)  # (B, 1)
        rows = runs[:, 0].nonzero()[:, 0]
        n = rows.shape[0]
        out = torch.zeros_like(x)
        if n:
            B = x.shape[0]
            every = n == B
            kept = RouteInfo(task=route.task if every else route.task[rows], valid=runs if every else runs[rows])
            pick = (lambda t: t) if every else (lambda t: t[rows])
            rows_cache = cache if every else cache.rows(rows)
            delta = self.block(pick(x), pick(positions), pick(attn_mask), kept, cache=rows_cache)
            if not self.weight.startswith("ste_") or torch.is_grad_enabled():
                w = self.router_weight(pick(scores))
                if route.always is not None:  # tokens that are not routed run with weight 1
                    w = torch.where(pick(route.always), torch.ones_like(w), w)
                delta = delta * w[..., None].to(delta.dtype)
            # else the straight-through weight is exactly 1 and nothing asks for its gradient
            delta = delta.to(x.dtype)
            out = delta if every else out.index_copy(0, rows, delta)
        self._trace("threshold", route, runs, [(n, 1)])
        return out

    def _record_router_state(self, record, x, route, scores, selected) -> None:
        """What the router's learning depends on, over the valid routed tokens of routed rows
        (detached, no device sync): its weight's gradient d w / d s per token and its logits
        (RoutingTrace.router_state), and, with a causal decision, how that decision
        compares with top-k: [routed tokens, top-k selected, decided (logit > 0), both]."""
        routed = route.routed() & (self.row_capacity(route.task) < 1.0)[:, None]
        s = scores.detach()[routed]
        record.router_logits, record.weight_gradient = s.float(), self.weight_gradient(s)
        if self.causal != "none":
            decided = self.decision_logits(x, route.task, scores).detach()[routed] > 0
            top = selected[routed]
            record.decision_counts = torch.stack(
                [routed.sum(), top.sum(), decided.sum(), (decided & top).sum()]
            ).float()

    def _score_causal_decision(self, x, route, scores, selected) -> tuple[torch.Tensor, torch.Tensor | None]:
        """BCE of the decision logits against top-k's choice (target 1 = selected), over the valid
        tokens of *routed* rows (capacity < 1: a dense row's tokens all run, whatever the logit),
        and their agreement; for aux_bce it trains the router itself, for the predictor only the
        predictor. With no routed token the loss is a zero that keeps the graph, agreement None."""
        routed = route.routed() & (self.row_capacity(route.task) < 1.0)[:, None]
        logits = self.decision_logits(x, route.task, scores).float()
        if not bool(routed.any()):
            return logits.sum() * 0.0, None
        logits, target = logits[routed], selected[routed]
        right = (logits.detach() > 0) == target
        if self.aux_margin is None:
            aux = F.binary_cross_entropy_with_logits(logits, target.float())
        else:  # tokens already right by more than the margin push their logits no further
            keep = (~(right & (logits.detach().abs() > self.aux_margin))).float()
            aux = (F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none") * keep).mean()
        return aux, right.float().mean()

    def _route_rows(
        self, x, positions, attn_mask, valid, scores, capacity, task, cache=None, forced=None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The routed delta of these rows, which of their tokens ran the block (B, T), and the
        batched call's K."""
        idx, slot_ok = topk_select(scores.detach(), valid, capacity, forced)
        # unused slots point at token 0; adding 0 there leaves a selected token 0 selected
        selected = torch.zeros(valid.shape, device=x.device).scatter_add(1, idx, slot_ok.float()) > 0
        if idx.shape[1] == 0:  # threshold routing kept no token in any row: nothing runs, nothing is cached
            return torch.zeros_like(x), selected, 0
        # the inner block's batch is the kept tokens; with a cache only real ones (slot_ok) store K/V
        kept = RouteInfo(task=task, valid=slot_ok)
        delta = self.block(
            gather_tokens(x, idx), positions.gather(1, idx), slice_mask(attn_mask, idx, slot_ok), kept, cache=cache
        )
        w = self.router_weight(gather_tokens(scores, idx))
        if forced is not None:  # tokens that are not routed run with weight 1: the router learns nothing from them
            w = torch.where(gather_tokens(forced, idx), torch.ones_like(w), w)
        delta = (delta * (w * slot_ok)[..., None].to(delta.dtype)).to(x.dtype)  # bf16 under autocast
        # unused slots point at token 0 with a zero delta, so scatter_add leaves it unchanged
        return torch.zeros_like(x).scatter_add(1, idx[..., None].expand_as(delta), delta), selected, idx.shape[1]
