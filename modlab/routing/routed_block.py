"""The routed block (Mixture-of-Depths, and UniMoD's task-aware form).

Each row keeps its k = ceil(C * n_eligible) highest-scoring eligible tokens; only those run the
wrapped block (attention among themselves + MLP), the rest pass through unchanged:

    x_i + w_i * f(x_sel)_i   for kept tokens,      x_i   otherwise.

Which weight w scales the delta, and why: by default the *straight-through sigmoid*
w = (sigmoid(s) - stopgrad(sigmoid(s))) + 1. Its forward value is exactly 1, so a routed model at
C = 1 is the dense model bit for bit and a dense checkpoint fine-tunes from its own function
(UniMoD's protocol); its gradient is the sigmoid's, dL/ds = sigmoid'(s) * <dL/dy_i, f(x)_i>, so the
router learns which tokens gain from the block (MoD's reason for putting r on the path).
`weight="sigmoid"` uses w = sigmoid(s) in the forward pass too (closer to the MoD paper's
r * f(x), at the price of C = 1 no longer being the dense block).

Causal inference. Top-k over a row sees the whole row, so it cannot be used while decoding token by
token. With `causal="aux_bce"` (MoD's auxiliary loss) the router's own logits are trained with a
BCE loss to be > 0 exactly for the tokens top-k selected; with `causal="predictor"` a small MLP
on the stop-gradient hidden state learns the same decision and the router is left alone. In
`mode="threshold"` (decoding) each token runs the block iff that logit is > 0: a decision that
depends on the token's own hidden state only, hence causal. Rows whose capacity in this layer is
1.0 (a task that is dense here, e.g. LM rows of a UniMoD layer that routes MMU only) ran every
token under top-k, so they run every token under threshold routing too: no logit decides for
them, and neither the causal loss nor `last_agreement` counts their tokens. `last_agreement`
records how often the threshold decision equals top-k's over the *routed* tokens (a metric worth
watching: it is what decoding relies on). In threshold mode every call also adds, per task id,
the tokens that ran and the valid tokens to `threshold_counts` (what decoding really kept, beside
the target capacity; `modlab.routing.install.threshold_kept` reads it).

Rows are handled in one batched gather / scatter: the kept indices are sorted (causal order is
preserved), their *original* positions are gathered for RoPE, and the attention mask is sliced on
rows and columns, so omni-attention semantics hold among the kept tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.routing.router import RoutingPredictor, TaskRouter
from modlab.routing.schedule import annealed_capacity
from modlab.routing.topk import topk_select

ROUTER_WEIGHTS = ("ste_sigmoid", "sigmoid")
CAUSAL_MODES = ("none", "aux_bce", "predictor")


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
        self, block: nn.Module, d_model: int, capacity: list[float], weight: str = "ste_sigmoid", causal: str = "none"
    ):
        super().__init__()
        if weight not in ROUTER_WEIGHTS:
            raise ValueError(f"router weight '{weight}' is unknown ({', '.join(ROUTER_WEIGHTS)})")
        if causal not in CAUSAL_MODES:
            raise ValueError(f"causal routing '{causal}' is unknown ({', '.join(CAUSAL_MODES)})")
        self.block = block
        self.router = TaskRouter(d_model, n_routers=len(capacity))
        self.predictor = RoutingPredictor(d_model, n_routers=len(capacity)) if causal == "predictor" else None
        self.register_buffer("capacity", torch.tensor(capacity, dtype=torch.float32), persistent=False)
        self.weight, self.causal = weight, causal
        self.mode = "topk"  # "threshold" while decoding (needs causal != "none"); see plan.threshold_routing
        self.last_aux_loss: torch.Tensor | None = None  # BCE of the causal decision vs top-k, last call
        self.last_agreement: torch.Tensor | None = None  # fraction of valid tokens where they agree
        self.anneal = 1.0  # training-time capacity schedule (modlab.routing.schedule); eval: target
        self.last_selected: torch.Tensor | None = None  # (B, T) tokens that ran the block in the last call
        self.last_kept: torch.Tensor | None = None  # (B,) tokens kept per row in the last call
        # (rows, K) of each batched call in the last forward: what really ran (for FLOPs)
        self.last_groups: list[tuple[int, int]] = []
        # threshold mode: (task ids, 2) running sums of [tokens that ran, valid tokens] per task id
        self.threshold_counts: torch.Tensor | None = None

    def routing_weights(self) -> int:
        """Weights applied to every token to decide the routing (for FLOPs accounting)."""
        mods = [self.router] + ([self.predictor] if self.predictor is not None else [])
        return sum(p.numel() for m in mods for p in m.parameters())

    def decision_logits(self, x: torch.Tensor, task: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The causal routing decision's logits: > 0 means "run the block" at decoding time."""
        return scores if self.predictor is None else self.predictor(x.detach(), task)

    def row_capacity(self, task: torch.Tensor, capacity: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the capacity of each row's router (a task id past the last router uses the last)."""
        capacity = self.capacity if capacity is None else capacity
        return capacity[task.clamp(max=len(capacity) - 1)]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor, route) -> torch.Tensor:
        scores = self.router(x, route.task)  # (B, T) logits
        self.last_kept = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.last_groups = []
        self.last_aux_loss = self.last_agreement = None
        if self.mode == "threshold" and self.causal != "none":
            # every token whose decision logit is > 0 runs the block: a per-token, causal choice;
            # rows of a task that is dense in this layer (capacity 1) run all their tokens
            dense_row = self.row_capacity(route.task) >= 1.0
            decided = self.decision_logits(x, route.task, scores).detach() > 0
            eligible = route.valid & (decided | dense_row[:, None])
            out, self.last_selected = self._route_rows(x, positions, attn_mask, eligible, scores, torch.ones(()), None)
            self._count_threshold(route, eligible)
            return out
        capacity = self.capacity
        if self.training and self.anneal < 1.0:
            capacity = annealed_capacity(capacity, self.anneal)
        row_capacity = self.row_capacity(route.task, capacity)
        if len(row_capacity.unique()) == 1:  # MoD, or one capacity for all rows: one call
            out, selected = self._route_rows(x, positions, attn_mask, route.valid, scores, row_capacity, None)
        else:
            # Task routers with different capacities: the rows of each task go through together.
            # Rows of one task keep similar k, so the batched K = max k wastes little; mixing tasks
            # (e.g. dense LM rows with MMU rows at 0.2) would make every row pay for the largest k.
            out, selected = torch.zeros_like(x), torch.zeros_like(route.valid)
            for t in route.task.unique().tolist():
                rows = (route.task == t).nonzero().squeeze(1)
                out[rows], selected[rows] = self._route_rows(
                    x[rows], positions[rows], attn_mask[rows], route.valid[rows], scores[rows], row_capacity[rows], rows
                )
        self.last_selected = selected
        if self.causal != "none":
            self._score_causal_decision(x, route, scores, selected)
        return out

    def _count_threshold(self, route, ran: torch.Tensor) -> None:
        """Add this call's tokens that ran and valid tokens per task id to `threshold_counts`."""
        task = route.task.long()
        n = max(int(task.max()) + 1 if task.numel() else 0, len(self.capacity))
        counts = torch.zeros(n, 2, dtype=torch.float64, device=ran.device)
        counts[:, 0].index_add_(0, task, ran.sum(1).double())
        counts[:, 1].index_add_(0, task, route.valid.sum(1).double())
        old = self.threshold_counts
        if old is not None and len(old) < n:
            old = torch.cat([old, old.new_zeros(n - len(old), 2)])
        elif old is not None and len(old) > n:
            counts = torch.cat([counts, counts.new_zeros(len(old) - n, 2)])
        self.threshold_counts = counts if old is None else old.to(counts.device) + counts

    def _score_causal_decision(self, x, route, scores, selected) -> None:
        """BCE of the decision logits against top-k's choice (target 1 = selected), over the valid
        tokens of *routed* rows (capacity < 1: a dense row's tokens all run, whatever the logit);
        for aux_bce it trains the router itself, for the predictor only the predictor. With no
        routed token the loss is a zero that keeps the graph and the agreement stays None."""
        routed = route.valid & (self.row_capacity(route.task) < 1.0)[:, None]
        logits = self.decision_logits(x, route.task, scores).float()
        if not bool(routed.any()):
            self.last_aux_loss = logits.sum() * 0.0
            return
        logits, target = logits[routed], selected[routed]
        self.last_aux_loss = F.binary_cross_entropy_with_logits(logits, target.float())
        self.last_agreement = ((logits.detach() > 0) == target).float().mean()

    def _route_rows(self, x, positions, attn_mask, valid, scores, capacity, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """The routed delta of these rows, and which of their tokens ran the block (B, T)."""
        idx, slot_ok = topk_select(scores.detach(), valid, capacity)
        kept = slot_ok.sum(1)
        if rows is None:
            self.last_kept = kept
        else:
            self.last_kept[rows] = kept
        self.last_groups.append((x.shape[0], idx.shape[1]))
        # unused slots point at token 0; adding 0 there leaves a selected token 0 selected
        selected = torch.zeros(valid.shape, device=x.device).scatter_add(1, idx, slot_ok.float()) > 0
        if idx.shape[1] == 0:  # threshold routing kept no token in any row
            return torch.zeros_like(x), selected
        delta = self.block(gather_tokens(x, idx), positions.gather(1, idx), slice_mask(attn_mask, idx, slot_ok))
        gate = torch.sigmoid(gather_tokens(scores, idx).float())
        # (g - g) is exactly 0, so the straight-through weight is exactly 1 in the forward pass
        w = (gate - gate.detach()) + 1.0 if self.weight == "ste_sigmoid" else gate
        delta = (delta * (w * slot_ok)[..., None].to(delta.dtype)).to(x.dtype)  # bf16 under autocast
        # unused slots point at token 0 with a zero delta, so scatter_add leaves it unchanged
        return torch.zeros_like(x).scatter_add(1, idx[..., None].expand_as(delta), delta), selected
