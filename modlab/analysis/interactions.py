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

What the numbers can support (issue 12). Fresh random routers already split a joint budget
unevenly (a random projection ranks two tasks' hidden states differently), and a few steps that
train every weight change the model, not only the routers. So (b) tunes the routers alone (the
checkpoint's weights are frozen; `router_competition`), until the routing stops moving: every
`eval_every` steps it measures, on the held-out rows, each task's kept fraction per routed layer
and the share of held-out tokens whose routing decision flipped since the last check, and stops
once both moved less than `tol` for `patience` checks in a row (or at `max_steps`, recorded as
not converged). The curve is returned, and the whole is repeated for several seeds (router
initialisation and training rows), with the mean and spread over seeds; only a gap between the
shared router and the task routers that exceeds that spread says the tasks compete. (a) compares
runs at equal steps per task: a joint step holds one batch of every task, so after N steps each
task has seen N of its batches in the joint run as in its single-task run
(`joint_vs_single_seeds`, with the held-out losses along the way and the per-seed joint - single
differences, paired by seed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from modlab.analysis.importance import mean_task_losses
from modlab.analysis.stats import paired_difference, spread_by
from modlab.analysis.subject import showo_subject
from modlab.data.rows import collate_rows
from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TASKS
from modlab.models.omni_attention import omni_attention_mask
from modlab.models.showo import ShowO
from modlab.routing.install import RouteInfo, install_routing
from modlab.routing.routed_block import RoutedBlock
from modlab.routing.trace import record_routing


def train_steps(
    model: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    weight_decay: float = 0.1,
    advance: Callable[[], None] | None = None,
    params: list[torch.nn.Parameter] | None = None,
    every: int = 0,
    check: Callable[[int], bool] | None = None,
) -> int:
    """AdamW with a short linear warm-up (a tenth of the steps) and gradient clipping at 1.
    `params`: train only these (the others are frozen for the duration); default: all.
    `check(step)` is called (in eval mode, after `step` steps) before training and every `every`
    steps; returning True stops the run early. Returns the steps taken."""
    trained = list(model.parameters()) if params is None else list(params)
    ids = {id(p) for p in trained}
    frozen = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    decay = [p for p in trained if p.dim() >= 2]
    rest = [p for p in trained if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))

    def checked(step: int) -> bool:
        if check is None:
            return False
        model.eval()
        stop = check(step)
        model.train()
        return bool(stop)

    model.train()
    done = 0
    try:
        if checked(0):
            return 0
        for done in range(1, steps + 1):
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            sched.step()
            if advance:
                advance()
            if every and (done % every == 0 or done == steps) and checked(done):
                break
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
    return done


def router_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The routers' weights (and causal-decision predictors') of every routed block."""
    return [
        p
        for m in model.modules()
        if isinstance(m, RoutedBlock)
        for sub in (m.router, m.predictor)
        if sub is not None
        for p in sub.parameters()
    ]


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


def _routed_copy(base: ShowO, router: str, layers: list[int], capacity: float, tasks, seed: int) -> ShowO:
    """A copy of `base` with fresh routers (seeded): one shared router or one per task."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    caps = [capacity] if router == "shared" else [capacity if t in tasks else 1.0 for t in TASKS]
    install_routing(model.transformer.blocks, base.cfg.d_model, {i: caps for i in layers}, "ste_sigmoid")
    return model


def _held_out_pairs(held_out: dict[str, list[dict]], tasks) -> list[dict[str, dict]]:
    """Batch j of every task, cut to the same row count (packing pairs row b of each task)."""
    out = []
    for j in range(min(len(held_out[t]) for t in tasks)):
        parts = {t: held_out[t][j] for t in tasks}
        n = min(len(p["ids"]) for p in parts.values())
        out.append({t: {k: v[:n] for k, v in p.items()} for t, p in parts.items()})
    return out


def routing_state(model: ShowO, router: str, pairs: list[dict[str, dict]], pad_id: int):
    """On the held-out pairs: {(layer, task): [kept, valid]} and every routed layer's selection
    of every forward (for how many decisions flip between two checks)."""
    totals: dict[tuple[int, str], list[int]] = {}
    with record_routing(model) as every_call:
        for parts in pairs:
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
    selections = [r.selected.flatten() for r in every_call.records]
    return totals, torch.cat(selections) if selections else torch.zeros(0, dtype=torch.bool)


def _router_loss(model: ShowO, router: str, samplers, weights, cond_dropout: float, pad_id: int):
    def loss_fn() -> torch.Tensor:
        parts = masked_pair(model, {t: s() for t, s in samplers.items()}, cond_dropout)
        if router == "shared":
            return weighted_loss(packed_task_losses(model, pack_rows(parts, pad_id)), weights)
        losses = {}
        for p in parts:
            losses.update(model.task_losses(p))
        return weighted_loss(losses, weights)

    return loss_fn


def _routed_held_out_losses(model: ShowO, router: str, pairs, pad_id: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for parts in pairs:
            n = len(next(iter(parts.values()))["ids"])
            masked = masked_pair(model, parts, 0.0, g)
            if router == "shared":
                losses = packed_task_losses(model, pack_rows(masked, pad_id))
            else:
                losses = {k: v for p in masked for k, v in model.task_losses(p).items()}
            rows += [{"task": task, "loss": float(loss), "rows": n} for task, loss in losses.items()]
    return rows


def router_competition(
    base: ShowO,
    make_samplers: Callable[[int], dict[str, RowSampler]],
    held_out: dict[str, list[dict]],
    layers: list[int],
    capacity: float,
    lr: float,
    weights: dict[str, float],
    cond_dropout: float,
    seeds: list[int],
    pad_id: int,
    max_steps: int = 200,
    eval_every: int = 20,
    tol: float = 0.01,
    patience: int = 2,
    advance: Callable[[], None] | None = None,
) -> dict[str, list[dict]]:
    """(b), measured as the module docstring says: for router in (shared, task) and each seed,
    fresh routers on a frozen copy of `base` are tuned alone (AdamW at `lr`, no weight decay)
    until the kept fractions and the held-out routing decisions stop moving (both change by less
    than `tol` for `patience` checks in a row, checked every `eval_every` steps) or `max_steps`.

    Returns tables:
      curve       {router, seed, step, layer, task, kept_fraction}  every check, step 0 = fresh routers
      movement    {router, seed, step, kept_change, flipped}        largest kept-fraction change and
                                                                    share of decisions flipped since the last check
      runs        {router, seed, steps, converged}                  converged: the routing stopped moving
      final       {router, seed, layer, task, kept_fraction}        after tuning
      summary     {router, layer, task, mean, std, n}               over seeds
      gap         {layer, task, mean, std, n, ci95, exceeds_spread} shared - task routers, paired by seed
      losses      {router, seed, task, loss}                        held-out, after tuning
      loss_summary {router, task, mean, std, n}"""
    if not seeds:
        raise ValueError("router_competition needs at least one seed")
    tasks = list(make_samplers(seeds[0]))
    pairs = _held_out_pairs(held_out, tasks)
    tables: dict[str, list[dict]] = {k: [] for k in ("curve", "movement", "runs", "final", "losses")}
    for router in ("shared", "task"):
        for seed in seeds:
            model = _routed_copy(base, router, layers, capacity, tasks, seed)
            samplers = make_samplers(seed)
            state = {"prev": None, "calm": 0, "converged": False}

            def check(step: int, router=router, seed=seed, model=model, state=state) -> bool:
                totals, sel = routing_state(model, router, pairs, pad_id)
                kept = {key: k / v for key, (k, v) in totals.items()}
                for (layer, task), frac in sorted(kept.items()):
                    tables["curve"].append(
                        {
                            "router": router,
                            "seed": seed,
                            "step": step,
                            "layer": layer,
                            "task": task,
                            "kept_fraction": frac,
                        }
                    )
                if state["prev"] is not None:
                    prev_kept, prev_sel = state["prev"]
                    change = max(abs(kept[k] - prev_kept[k]) for k in kept)
                    flipped = float((sel != prev_sel).float().mean()) if len(sel) else 0.0
                    tables["movement"].append(
                        {"router": router, "seed": seed, "step": step, "kept_change": change, "flipped": flipped}
                    )
                    state["calm"] = state["calm"] + 1 if max(change, flipped) < tol else 0
                state["prev"] = (kept, sel)
                state["converged"] = state["calm"] >= patience
                return state["converged"]

            steps = train_steps(
                model,
                _router_loss(model, router, samplers, weights, cond_dropout, pad_id),
                max_steps,
                lr,
                weight_decay=0.0,  # decay would pull the routers to zero, where every score ties
                advance=advance,
                params=router_parameters(model),
                every=eval_every,
                check=check,
            )
            tables["runs"].append({"router": router, "seed": seed, "steps": steps, "converged": state["converged"]})
            last = max(r["step"] for r in tables["curve"] if r["router"] == router and r["seed"] == seed)
            tables["final"] += [
                {k: r[k] for k in ("router", "seed", "layer", "task", "kept_fraction")}
                for r in tables["curve"]
                if r["router"] == router and r["seed"] == seed and r["step"] == last
            ]
            for r in _mean_by(_routed_held_out_losses(model, router, pairs, pad_id, seed), ("task",), "loss", "rows"):
                tables["losses"].append({"router": router, "seed": seed, **r})
    tables["summary"] = spread_by(tables["final"], ("router", "layer", "task"), "kept_fraction")
    tables["loss_summary"] = spread_by(tables["losses"], ("router", "task"), "loss")
    tables["gap"] = paired_difference(tables["final"], "router", "shared", "task", ("layer", "task"), "kept_fraction")
    return tables


def joint_vs_single_seeds(
    make_model: Callable[[], ShowO],
    make_samplers: Callable[[int], dict[str, RowSampler]],
    held_out: dict[str, list[dict]],
    steps: int,
    lr: float,
    weights: dict[str, float],
    cond_dropout: float,
    seeds: list[int],
    eval_every: int = 0,
    advance: Callable[[], None] | None = None,
) -> dict[str, list[dict]]:
    """(a) over several seeds, at equal steps per task: a joint step holds one batch of every
    task, a single-task step one batch of its task, so after `steps` steps every task has seen
    `steps` of its batches in both. Each seed fixes the initial weights and the rows drawn, the
    same for every run of that seed.

    Returns tables:
      curve       {run, seed, step, task, loss}        held-out loss every `eval_every` steps and at the end
      final       {run, seed, task, loss}              after `steps`
      summary     {run, task, mean, std, n}            over seeds
      difference  {task, mean, std, n, ci95, exceeds_spread}  joint - single-task, paired by seed"""
    if not seeds:
        raise ValueError("joint_vs_single_seeds needs at least one seed")
    task_names = list(make_samplers(seeds[0]))
    runs = {f"single:{t}": [t] for t in task_names} | {"joint": task_names}
    tables: dict[str, list[dict]] = {"curve": [], "final": []}
    for seed in seeds:
        for run, tasks in runs.items():
            torch.manual_seed(seed)
            model = make_model()
            samplers = make_samplers(seed)

            def loss_fn(model=model, samplers=samplers, tasks=tasks) -> torch.Tensor:
                losses = {}
                for t in tasks:
                    losses.update(model.task_losses(model.training_batch(samplers[t](), cond_dropout)))
                return weighted_loss(losses, weights)

            def check(step: int, model=model, run=run, seed=seed, tasks=tasks) -> bool:
                own = {t: held_out[t] for t in tasks}
                for task, loss in mean_task_losses(showo_subject(model), own, seed).items():
                    tables["curve"].append({"run": run, "seed": seed, "step": step, "task": task, "loss": loss})
                return False

            train_steps(model, loss_fn, steps, lr, advance=advance, every=eval_every or steps, check=check)
            tables["final"] += [
                {k: r[k] for k in ("run", "seed", "task", "loss")}
                for r in tables["curve"]
                if r["run"] == run and r["seed"] == seed and r["step"] == steps
            ]
    tables["summary"] = spread_by(tables["final"], ("run", "task"), "loss")
    rows = [{**r, "run": "single" if r["run"].startswith("single:") else "joint"} for r in tables["final"]]
    tables["difference"] = paired_difference(rows, "run", "joint", "single", ("task",), "loss")
    return tables


def _mean_by(rows: list[dict], keys: tuple[str, ...], value: str, weight: str) -> list[dict]:
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        a = acc.setdefault(tuple(r[k] for k in keys), [0.0, 0.0])
        a[0] += r[value] * r[weight]
        a[1] += r[weight]
    return [{**dict(zip(keys, k)), value: s / w} for k, (s, w) in acc.items()]
