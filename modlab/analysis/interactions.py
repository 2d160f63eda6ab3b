"""How the tasks of a unified model interact (UniMoD's motivation for task-aware routing).

(a) Single-task vs joint training: the same fresh model trained for the same number of steps on
    one task alone, or on all tasks together (every step holds a batch of each task); each task's
    held-out loss tells whether sharing the network helps (transfer) or hurts (interference).
(b) Competition for a routing budget: fine-tune the trained model with routing on its last half
    of layers in two ways, from the same weights and for the same steps,
      shared  one router, one joint budget: a row of each task is packed into one sequence
              (block-diagonal attention, positions restarting per segment) and the top-k at
              capacity C runs over the packed sequence, so the tasks compete for C of the tokens;
      task    UniMoD's task routers: each task keeps C of its own tokens.
    Then count the tokens each task keeps per routed layer on held-out rows. A shared router that
    starves one task keeps far less than C of its tokens and far more of the other's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from modlab.analysis.importance import mean_task_losses
from modlab.analysis.subject import showo_subject
from modlab.data.rows import collate_rows
from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TASKS
from modlab.models.omni_attention import omni_attention_mask
from modlab.models.showo import ShowO
from modlab.routing.install import RouteInfo, install_routing
from modlab.routing.trace import record_routing


def train_steps(
    model: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    weight_decay: float = 0.1,
    advance: Callable[[], None] | None = None,
) -> None:
    """AdamW with a short linear warm-up (a tenth of the steps) and gradient clipping at 1."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if advance:
            advance()
    model.eval()


class RowSampler:
    """Random training batches of one task's rows (seeded)."""

    def __init__(self, dataset, batch_size: int, pad_id: int, seed: int):
        self.dataset, self.batch_size, self.pad_id = dataset, batch_size, pad_id
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self) -> dict:
        idx = torch.randint(len(self.dataset), (self.batch_size,), generator=self.g).tolist()
        return collate_rows([self.dataset[i] for i in idx], self.pad_id)


def weighted_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return sum(weights.get(k, 1.0) * v for k, v in losses.items())


# ---- (a) single-task vs joint training -------------------------------------------------------


def joint_vs_single(
    make_model: Callable[[], ShowO],
    make_samplers: Callable[[], dict[str, RowSampler]],
    held_out: dict[str, list[dict]],
    steps: int,
    lr: float,
    weights: dict[str, float],
    cond_dropout: float,
    seed: int,
    advance: Callable[[], None] | None = None,
) -> list[dict]:
    """Rows {run, task, loss}: run is `single:<task>` or `joint`; loss is the held-out loss. Every
    run starts from the same initial weights and draws the same rows of its tasks."""
    out = []
    task_names = list(make_samplers())
    runs = {f"single:{t}": [t] for t in task_names} | {"joint": task_names}
    for run, tasks in runs.items():
        torch.manual_seed(seed)
        model = make_model()
        samplers = make_samplers()

        def loss_fn() -> torch.Tensor:
            losses = {}
            for t in tasks:
                losses.update(model.task_losses(model.training_batch(samplers[t](), cond_dropout)))
            return weighted_loss(losses, weights)

        train_steps(model, loss_fn, steps, lr, advance=advance)
        for task, loss in mean_task_losses(showo_subject(model), held_out, seed).items():
            out.append({"run": run, "task": task, "loss": loss})
    return out


# ---- (b) a shared router with a joint budget vs task routers -----------------------------------


def pack_rows(batches: list[dict], pad_id: int) -> dict:
    """Pack row b of every task batch into one sequence (batches must have equal row counts).

    Keeps each row's valid tokens, restarts positions and image raster indices per segment,
    and records the segment's task (`segment_task`, (B, T), -1 on padding); `mask` is each
    segment's own omni-attention mask (no attention across segments)."""
    B = batches[0]["ids"].shape[0]
    rows, extra = [], []
    for b in range(B):
        parts = {k: [] for k in ("ids", "labels", "is_image", "cond", "positions", "raster", "segment", "segment_task")}
        for s, batch in enumerate(batches):
            n = int(batch["valid"][b].sum())
            is_image = batch["is_image"][b, :n]
            for k in ("ids", "labels", "is_image", "cond"):
                parts[k].append(batch[k][b, :n])
            parts["positions"].append(torch.arange(n))
            parts["raster"].append((is_image.long().cumsum(0) - 1).clamp(min=0))
            parts["segment"].append(torch.full((n,), s))
            parts["segment_task"].append(torch.full((n,), int(batch["task"][b])))
        row = {k: torch.cat(v) for k, v in parts.items()}
        rows.append(
            {
                **{k: row[k] for k in ("ids", "labels", "is_image", "cond")},
                "task": torch.tensor(0),
                "digit": torch.tensor(-1),
            }
        )
        extra.append({k: row[k] for k in ("positions", "raster", "segment", "segment_task")})
    packed = collate_rows(rows, pad_id)
    T = packed["ids"].shape[1]
    for k, fill in (("positions", 0), ("raster", 0), ("segment", -1), ("segment_task", -1)):
        packed[k] = torch.stack([F.pad(e[k], (0, T - len(e[k])), value=fill) for e in extra])
    same = packed["segment"][:, :, None] == packed["segment"][:, None, :]
    packed["mask"] = omni_attention_mask(packed["is_image"], packed["valid"]) & same[:, None]  # keeps the diagonal
    return packed


def packed_logits(model: ShowO, packed: dict) -> torch.Tensor:
    """ShowO's forward on packed rows (its own mask, positions and per-segment image raster)."""
    extra = (
        model.image_pos(packed["raster"].clamp(max=model.image_pos.num_embeddings - 1)) * packed["is_image"][..., None]
    )
    route = RouteInfo(task=torch.zeros(packed["ids"].shape[0], dtype=torch.long), valid=packed["valid"])
    return model.transformer(packed["ids"], packed["mask"], packed["positions"], extra_embed=extra, route=route)


def packed_task_losses(model: ShowO, packed: dict) -> dict[str, torch.Tensor]:
    logits = packed_logits(model, packed)
    ce = F.cross_entropy(logits.float().transpose(1, 2), packed["labels"], ignore_index=IGNORE_INDEX, reduction="none")
    out = {}
    for name in TASKS:
        sel = (packed["labels"] != IGNORE_INDEX) & (packed["segment_task"] == TASK_ID[name])
        if sel.any():
            out[name] = ce[sel].mean()
    return out


def masked_pair(model: ShowO, batches: dict[str, dict], cond_dropout: float, generator=None) -> list[dict]:
    """The task batches with T2I images masked (labels on the masked codes), ready to pack."""
    return [model.training_batch(b, cond_dropout, generator=generator) for b in batches.values()]


def kept_fractions(
    model: ShowO, segment_task: torch.Tensor, run: Callable[[], object]
) -> dict[tuple[int, str], tuple[int, int]]:
    """{(layer, task): (kept, valid)} tokens per routed layer during `run()`, as the routing trace
    records them (`segment_task` (B, T) gives each token's task: packed rows mix tasks)."""
    counts: dict[tuple[int, str], list[int]] = {}
    with torch.no_grad(), record_routing(model) as trace:
        run()
    for r in trace.records:
        for name in TASKS:
            tok = segment_task == TASK_ID[name]
            if tok.any():
                c = counts.setdefault((r.layer, name), [0, 0])
                c[0] += int((r.selected & tok).sum())
                c[1] += int((r.valid & tok).sum())
    return {k: (v[0], v[1]) for k, v in counts.items()}


def shared_vs_task_routers(
    base: ShowO,
    samplers: dict[str, RowSampler],
    held_out: dict[str, list[dict]],
    layers: list[int],
    capacity: float,
    steps: int,
    lr: float,
    weights: dict[str, float],
    cond_dropout: float,
    seed: int,
    pad_id: int,
    advance: Callable[[], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Rows {router, stage, layer, task, kept_fraction} (stage: init | tuned) and
    {router, task, loss} (held-out, after tuning), for router = shared | task."""
    d = base.cfg.d_model
    n_held = min(len(b) for b in (held_out[t] for t in samplers))
    kept_rows, loss_rows = [], []
    for router in ("shared", "task"):
        torch.manual_seed(seed)
        model = copy.deepcopy(base)
        caps = [capacity] if router == "shared" else [capacity if t in samplers else 1.0 for t in TASKS]
        install_routing(model.transformer.blocks, d, {i: caps for i in layers}, "ste_sigmoid")

        def measure(stage: str) -> None:
            totals: dict[tuple[int, str], list[int]] = {}
            for j in range(n_held):
                parts = {t: held_out[t][j] for t in samplers}
                n = min(len(p["ids"]) for p in parts.values())
                parts = {t: {k: v[:n] for k, v in p.items()} for t, p in parts.items()}
                if router == "shared":
                    packed = pack_rows(list(parts.values()), pad_id)
                    found = kept_fractions(model, packed["segment_task"], lambda: packed_logits(model, packed))
                else:
                    found = {}
                    for p in parts.values():
                        seg = torch.where(p["valid"], p["task"][:, None], -1)
                        found |= kept_fractions(model, seg, lambda p=p: showo_subject(model).run(p))
                for key, (k, v) in found.items():
                    tot = totals.setdefault(key, [0, 0])
                    tot[0], tot[1] = tot[0] + k, tot[1] + v
            for (layer, task), (k, v) in sorted(totals.items()):
                kept_rows.append(
                    {"router": router, "stage": stage, "layer": layer, "task": task, "kept_fraction": k / v}
                )

        measure("init")

        def loss_fn() -> torch.Tensor:
            parts = masked_pair(model, {t: s() for t, s in samplers.items()}, cond_dropout)
            if router == "shared":
                return weighted_loss(packed_task_losses(model, pack_rows(parts, pad_id)), weights)
            losses = {}
            for p in parts:
                losses.update(model.task_losses(p))
            return weighted_loss(losses, weights)

        train_steps(model, loss_fn, steps, lr, advance=advance)
        measure("tuned")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for j in range(n_held):
                parts = {t: held_out[t][j] for t in samplers}
                n = min(len(p["ids"]) for p in parts.values())
                parts = masked_pair(model, {t: {k: v[:n] for k, v in p.items()} for t, p in parts.items()}, 0.0, g)
                if router == "shared":
                    losses = packed_task_losses(model, pack_rows(parts, pad_id))
                else:
                    losses = {k: v for p in parts for k, v in model.task_losses(p).items()}
                for task, loss in losses.items():
                    loss_rows.append({"router": router, "task": task, "loss": float(loss), "rows": n})
    return kept_rows, _mean_by(loss_rows, ("router", "task"), "loss", "rows")


def _mean_by(rows: list[dict], keys: tuple[str, ...], value: str, weight: str) -> list[dict]:
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        a = acc.setdefault(tuple(r[k] for k in keys), [0.0, 0.0])
        a[0] += r[value] * r[weight]
        a[1] += r[weight]
    return [{**dict(zip(keys, k)), value: s / w} for k, (s, w) in acc.items()]
