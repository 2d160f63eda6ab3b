"""From ARank to a routing plan (the file `routing.plan=<file>` trains with), for a FLOPs budget.

The rule (scale-free; docs/design.md: "ARank ranks layers and tasks; how much to prune is a budget
question"):

1. Redundancy. Pre-softmax ARank is bounded by min(n, head_dim), so it is read relative to that
   bound: r(task, layer) = ARank / min(n, head_dim) in (0, 1] (`arank_rel` of
   modlab.analysis.arank; post-softmax ARank is bounded by n, and arank_rel divides by n). Lower
   r = more redundant. It does not depend on how long the rows are or how wide the heads are: a
   layer using half of the directions it could use has r = 0.5 at head_dim 32 and 60-token rows
   as at head_dim 128 and 1,000-token rows. (The old rule, capacity = ARank / n, measured row
   length: ARank <= head_dim, so at head_dim 128 and 1,000 tokens every capacity was <= 0.128 and
   clipped to the floor, and the task with longer rows always looked more redundant.)
   With `importance`, the score is the mean of r's rank and LLM-Drop block importance's rank
   among the candidate pairs, scaled to [0, 1].
2. Candidates. Per routed task, the most redundant `fraction` of its layers (ties go to the
   deeper layer).
3. Allocation. One knob lam >= 0 lowers capacities, most redundant pairs first:

       capacity(p) = clip(1 - (lam - offset(p)), min_capacity, max_capacity),
       offset(p)   = score(p) - the smallest score among the candidates

   so the most redundant pair starts to lose tokens at lam = 0, a pair whose relative rank is
   0.2 higher starts at lam = 0.2, and at every lam a more redundant pair keeps fewer tokens. A
   pair at capacity 1 is not routed. The training-FLOPs ratio (routed / dense, modlab.flops on
   the planned configuration) falls monotonically in lam; bisection finds the lam whose ratio is
   `target_flops_ratio` (capacities are rounded to 3 decimals, and k = ceil(C n) makes the ratio
   a step function; the ratio of the rounded plan is what the file records).
4. Workload. The FLOPs are those of one training step of the checkpoint's data mix:
   `data.batch_size[task]` rows of each task (one forward per task batch, as UnifiedModule
   trains), each as long as that task's mean calibration row. Calibration rows come from the
   checkpoint's own data kind with the evaluation templates, so their lengths are the training
   rows' lengths up to template variation; padding to the longest row of a batch is not
   modelled (a percent or so on digit rows). Tasks that are never routed (e.g. LM rows) cost
   their dense FLOPs in both numerator and denominator: they bound how low the ratio can go. A
   task with training rows but no calibration rows uses `data.lm_length` for LM rows; for an
   image task that is an error (add it to calibration.tasks).

The plan's `source` records the rule, the target, the predicted ratio and the workload.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from modlab.analysis.config import PlanConfig
from modlab.data.tokens import TASKS
from modlab.errors import ConfigError
from modlab.flops import train_step_flops
from modlab.routing.plan_file import RoutingPlan, TaskPlan
from modlab.routing.topk import tokens_to_keep

RULE = "arank_rel ranks (task, layer); capacities allocated to a target training-FLOPs ratio"
ROUND = 3  # decimals of a planned capacity


def _ranks(values: list[float]) -> list[int]:
    """Position of each value in ascending order (0 = smallest); ties by depth, deeper first."""
    order = sorted(range(len(values)), key=lambda i: (values[i], -i))
    pos = [0] * len(values)
    for r, i in enumerate(order):
        pos[i] = r
    return pos


def training_workload(arank_rows: list[dict], data_cfg) -> dict[str, tuple[int, int]]:
    """{task: (rows per training step, tokens per row)} from `data.batch_size` and the mean
    calibration row length per task (`seq_len` of the ARank rows)."""
    lengths: dict[str, list[float]] = {}
    for r in arank_rows:
        lengths.setdefault(r["task"], []).append(r["seq_len"])
    out = {}
    for task, rows in data_cfg.batch_size.items():
        if rows <= 0:
            continue
        if task in lengths:
            n = round(sum(lengths[task]) / len(lengths[task]))
        elif task == "lm":
            n = data_cfg.lm_length
        else:
            raise ConfigError(
                f"the FLOPs budget needs the length of {task} rows (they train with data.batch_size.{task}="
                f"{rows}): add {task} to calibration.tasks"
            )
        out[task] = (int(rows), max(1, int(n)))
    return out


def plan_flops_ratio(
    layer_caps: dict[str, dict[int, float]], model_cfg, vocab_size: int, workload: dict[str, tuple[int, int]]
) -> float:
    """Training FLOPs of one step with this routing over those of the dense step (modlab.flops).

    `layer_caps` {task: {layer: capacity}}: every layer routed for some task holds a routed
    block with one router column per task; a task's rows run ceil(C n) tokens there (all n
    where the task is not routed), and every token pays for the router."""
    routed_layers = sorted({i for caps in layer_caps.values() for i in caps})
    routers = {i: model_cfg.d_model * len(TASKS) for i in routed_layers}
    routed = dense = 0
    for task, (rows, n) in workload.items():
        caps = layer_caps.get(task, {})
        groups = {}
        for i in routed_layers:  # k as the routed block computes it (float32 capacity buffer)
            k = int(tokens_to_keep(torch.tensor(caps.get(i, 1.0), dtype=torch.float32), torch.tensor(n)))
            groups[i] = [(rows, k)]
        routed += train_step_flops(model_cfg, vocab_size, rows, n, groups, routers)
        dense += train_step_flops(model_cfg, vocab_size, rows, n)
    return routed / dense


def _scores(
    arank_rel: dict[str, list[float]],
    cfg: PlanConfig,
    importance: dict[str, list[float]] | None,
    exclude: frozenset[int] = frozenset(),
) -> dict[tuple[str, int], float]:
    """Redundancy score of each candidate (task, layer): lower = more redundant. Layers in
    `exclude` are never candidates (and do not count towards `fraction`)."""
    candidates = {}
    for task in cfg.tasks:
        values = arank_rel[task]
        n_layer = len(values)
        order = _ranks(values)
        if importance is not None:
            order = [a + b for a, b in zip(order, _ranks(importance[task]))]
        allowed = [i for i in range(n_layer) if i not in exclude]
        n_routed = max(1, math.floor(cfg.fraction * len(allowed) + 1e-9))
        for i in sorted(allowed, key=lambda i: (order[i], values[i], -i))[:n_routed]:
            candidates[(task, i)] = values[i]
    if importance is None:
        return candidates
    keys = list(candidates)
    rel = _ranks([candidates[k] for k in keys])
    imp = _ranks([importance[t][i] for t, i in keys])
    scale = max(1, 2 * (len(keys) - 1))
    return {k: (a + b) / scale for k, a, b in zip(keys, rel, imp)}


def _capacities(scores: dict[tuple[str, int], float], lam: float, cfg: PlanConfig) -> dict[str, dict[int, float]]:
    low = min(scores.values())
    out: dict[str, dict[int, float]] = {}
    for (task, i), s in scores.items():
        c = 1.0 - (lam - (s - low))
        if c < 1.0:
            out.setdefault(task, {})[i] = round(min(cfg.max_capacity, max(cfg.min_capacity, c)), ROUND)
    return out


def lowest_reachable_ratio(
    seq_len: dict[str, float],
    n_layer: int,
    cfg: PlanConfig,
    model_cfg,
    vocab_size: int,
    data_cfg,
    flops_ratio: Callable[[dict[str, dict[int, float]], dict[str, tuple[int, int]]], float] | None = None,
    exclude_layers: frozenset[int] = frozenset(),
) -> float:
    """The lowest training-FLOPs ratio any plan can reach on this model and data, whatever the
    ARank: each routed task's candidate layers (`fraction` of the allowed ones) are those whose
    routing saves the most, all at `min_capacity`. Needs only the row lengths per task
    (`seq_len`: mean valid tokens), so a target out of reach is refused before any computation."""
    rows = [{"task": t, "layer": i, "arank_rel": 0.0, "seq_len": n} for t, n in seq_len.items() for i in range(n_layer)]
    workload = training_workload(rows, data_cfg)
    tasks = [t for t in cfg.tasks if t in workload]

    def ratio(caps: dict[str, dict[int, float]]) -> float:
        if flops_ratio is not None:
            return flops_ratio(caps, workload)
        return plan_flops_ratio(caps, model_cfg, vocab_size, workload)

    allowed = [i for i in range(n_layer) if i not in exclude_layers]
    n_routed = max(1, math.floor(cfg.fraction * len(allowed) + 1e-9))
    floor: dict[str, dict[int, float]] = {}
    for task in tasks:
        saving = {i: ratio({task: {i: cfg.min_capacity}}) for i in allowed}  # lower = saves more
        floor[task] = {i: cfg.min_capacity for i in sorted(allowed, key=lambda i: (saving[i], -i))[:n_routed]}
    return ratio(floor)


def unreachable_target_error(target: float, floor_ratio: float, cfg: PlanConfig) -> ConfigError:
    return ConfigError(
        f"analysis.plan.target_flops_ratio={target:g} is out of reach: with fraction={cfg.fraction:g} and "
        f"min_capacity={cfg.min_capacity:g} the lowest training-FLOPs ratio is {floor_ratio:.3f} (raise the "
        f"target or fraction, or lower min_capacity)"
    )


def plan_from_arank(
    arank_rows: list[dict],
    cfg: PlanConfig,
    model_cfg,
    vocab_size: int,
    data_cfg,
    importance: dict[str, list[float]] | None = None,
    source: dict | None = None,
    flops_ratio: Callable[[dict[str, dict[int, float]], dict[str, tuple[int, int]]], float] | None = None,
    exclude_layers: frozenset[int] = frozenset(),
) -> RoutingPlan:
    """The routing plan for `cfg.target_flops_ratio` (see the module docstring).

    arank_rows: modlab.analysis.arank.arank_analysis's rows (task, layer, arank_rel, seq_len);
    model_cfg / vocab_size: the modlab model the plan is for; data_cfg: its training data (rows
    per task per step, LM row length); importance: {task: LLM-Drop block importance per layer};
    flops_ratio(layer_caps, workload): the planned step's training-FLOPs ratio for a model
    modlab.flops does not describe (a transformers LM: modlab.routing.hf_flops), instead of
    model_cfg / vocab_size; exclude_layers: layers that must keep every token (never routed)."""
    arank_rel: dict[str, list[float]] = {}
    for r in sorted(arank_rows, key=lambda r: (r["task"], r["layer"])):
        arank_rel.setdefault(r["task"], []).append(float(r["arank_rel"]))
    missing = [t for t in cfg.tasks if t not in arank_rel]
    if missing:
        raise ConfigError(f"analysis.plan.tasks {missing} have no calibration rows (add them to calibration.tasks)")
    n_layer = len(next(iter(arank_rel.values())))
    if model_cfg is not None and n_layer != model_cfg.n_layer:
        raise ConfigError(f"ARank covers {n_layer} layers but the model has {model_cfg.n_layer}")
    workload = training_workload(arank_rows, data_cfg)
    routed_tasks = [t for t in cfg.tasks if t in workload]
    if not routed_tasks:
        raise ConfigError(f"analysis.plan.tasks {list(cfg.tasks)} have no training rows (data.batch_size is 0)")
    scores = _scores(arank_rel, replace(cfg, tasks=routed_tasks), importance, frozenset(exclude_layers))
    target = cfg.target_flops_ratio

    def ratio(lam: float) -> tuple[float, dict]:
        caps = _capacities(scores, lam, cfg)
        if flops_ratio is not None:
            return flops_ratio(caps, workload), caps
        return plan_flops_ratio(caps, model_cfg, vocab_size, workload), caps

    hi = 1.0 - cfg.min_capacity + max(scores.values()) - min(scores.values()) + 1e-6  # every candidate at the floor
    floor_ratio, caps = ratio(hi)
    if target < 1.0 and floor_ratio > target * 1.02:
        raise unreachable_target_error(target, floor_ratio, cfg)
    lo, best = 0.0, (abs(floor_ratio - target), floor_ratio, caps, hi)
    for _ in range(60):  # ratio(lam) falls as lam grows: bisection on the one knob
        mid = (lo + hi) / 2
        r, caps = ratio(mid)
        if abs(r - target) < best[0]:
            best = (abs(r - target), r, caps, mid)
        if r > target:
            lo = mid
        else:
            hi = mid
    _, predicted, caps, lam = best
    tasks = {t: TaskPlan(sorted(c), [c[i] for i in sorted(c)]) for t, c in caps.items() if c}
    info = {
        "rule": RULE,
        "target_flops_ratio": target,
        "predicted_flops_ratio": round(predicted, 4),
        "allocation_knob": round(lam, 4),
        "arank_rel": {t: [round(v, 4) for v in vs] for t, vs in arank_rel.items()},
        "flops_workload": {t: {"rows": b, "tokens": n} for t, (b, n) in workload.items()},
    }
    return RoutingPlan(n_layer=n_layer, tasks=tasks, source={**(source or {}), **info})
