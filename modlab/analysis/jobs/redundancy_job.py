"""`modlab analyze redundancy`: ARank per layer and task (modlab.analysis.arank) and, for a
unified model, the routing plan it implies (routing_plan.yaml, for `routing.plan=<file>`)."""

from __future__ import annotations

from dataclasses import replace

import torch

from modlab.analysis.arank import arank_analysis
from modlab.analysis.importance import llm_drop_importance
from modlab.analysis.plan_from_arank import lowest_reachable_ratio, plan_from_arank, unreachable_target_error
from modlab.analysis.report import JobResult, PlotSpec
from modlab.errors import ConfigError
from modlab.routing.plan_file import plan_text

PLAN_FILE = "routing_plan.yaml"


def run(c, target, progress) -> JobResult:
    subject, batches = target.subject, target.batches
    a, p = c.analysis.arank, c.analysis.plan
    L = subject.n_layer
    if target.plan is not None and p.write:
        refuse_unreachable_target(c, target)
    rows = arank_analysis(
        subject, batches, a.rtol, a.kind, progress.task(f"ARank ({a.kind})", sum(map(len, batches.values())))
    )
    val = {(r["task"], r["layer"]): r for r in rows}
    series = {k: {t: [val[(t, i)][k] for i in range(L)] for t in batches} for k in ("arank", "arank_norm")}
    panels = {"ARank (mean rank over heads)": series["arank"], "ARank / sequence length": series["arank_norm"]}
    plots = [
        PlotSpec(
            "per_layer", "arank.png", {"panels": panels, "ylabel": "rank", "title": f"ARank, {a.kind}, rtol {a.rtol:g}"}
        )
    ]
    shown_rows = [
        [i, *[f"{val[(t, i)]['arank']:.1f} / {val[(t, i)]['arank_norm']:.3f}" for t in batches]] for i in range(L)
    ]
    result = JobResult(
        tables={"arank": rows},
        shown=[
            (f"ARank per layer ({a.kind}, rtol {a.rtol:g}): rank / rank per token", ["layer", *batches], shown_rows)
        ],
        plots=plots,
        extra=dict(target.info),
    )
    if target.plan is None:
        result.notes.append(target.info.get("routing_plan_skipped", "this model gets no routing plan"))
    elif p.write:
        try:
            add_plan(c, target, rows, series, result, progress)
        except ConfigError as e:  # the ARank results are written all the same; the error follows them
            result.error = str(e)
    return result


def _plan_spec_config(c, target):
    p = c.analysis.plan
    return replace(p, tasks=list(target.plan.tasks)) if target.plan.tasks is not None else p


def refuse_unreachable_target(c, target) -> None:
    """A FLOPs target that no plan can reach on this model's shape and data is a one-line error
    before any computation (the lowest reachable ratio needs only the calibration rows' lengths)."""
    spec, p = target.plan, _plan_spec_config(c, target)
    if p.target_flops_ratio >= 1.0:
        return
    seq_len = {}
    for task, parts in target.batches.items():
        counts = [b["valid"].sum(1) if "valid" in b else torch.full((len(b["ids"]),), b["ids"].shape[1]) for b in parts]
        seq_len[task] = float(torch.cat(counts).double().mean())
    floor = lowest_reachable_ratio(
        seq_len,
        target.subject.n_layer,
        p,
        spec.model_cfg,
        spec.vocab_size,
        spec.data_cfg,
        flops_ratio=spec.flops_ratio,
        exclude_layers=spec.exclude_layers,
    )
    if floor > p.target_flops_ratio * 1.02:  # the tolerance plan_from_arank allows
        raise unreachable_target_error(p.target_flops_ratio, floor, p)


def add_plan(c, target, rows: list[dict], series: dict, result: JobResult, progress) -> None:
    """The routing plan from ARank (and LLM-Drop block importance with analysis.plan.importance)."""
    subject, batches, a, p = target.subject, target.batches, c.analysis.arank, c.analysis.plan
    importance = None
    if p.importance:
        advance = progress.task("LLM-Drop importance", sum(map(len, batches.values())))
        blocks = {
            (r["task"], r["layer"]): r["importance"]
            for r in llm_drop_importance(subject, batches, advance)
            if r["sublayer"] == "block"
        }
        importance = {t: [blocks[(t, i)] for i in range(subject.n_layer)] for t in batches}
        result.extra["block_importance"] = importance
    source = {
        "ckpt_path": c.ckpt_path,
        "job": "redundancy",
        "arank_kind": a.kind,
        "rtol": a.rtol,
        "arank_norm": {t: [round(v, 4) for v in series["arank_norm"][t]] for t in batches},
        "importance": bool(p.importance),
        "calibration_rows": c.calibration.n_per_task,
    }
    spec = target.plan
    p = _plan_spec_config(c, target)
    plan = plan_from_arank(
        rows,
        p,
        spec.model_cfg,
        spec.vocab_size,
        spec.data_cfg,
        importance,
        source,
        flops_ratio=spec.flops_ratio,
        exclude_layers=spec.exclude_layers,
    )
    result.files[PLAN_FILE] = plan_text(plan)
    result.extra["routing_plan"] = {"path": PLAN_FILE, **plan.to_dict()}
    plan_rows = [[t, str(tp.layers), str(tp.capacity)] for t, tp in plan.tasks.items()]
    result.shown.append(("routing plan", ["task", "routed layers", "capacity"], plan_rows))
    result.notes.append(
        f"routing plan: {{out}}/{PLAN_FILE}\ntrain with it: {spec.command}"
        + (f" init_from={c.ckpt_path}" if c.ckpt_path else "")
        + f" routing.plan={{out}}/{PLAN_FILE}"
    )
