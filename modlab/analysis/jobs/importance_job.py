"""`modlab analyze importance`: (a) each layer dropped in turn (its delta set to zero): every
task's loss and, where the family offers them, task metrics (MMU answers, T2I samples) or the LM
perplexity; (b) LLM-Drop importance 1 - cos(x, x + F(LN(x))) of every attention / MLP sublayer."""

from __future__ import annotations

import math

from modlab.analysis.importance import drop_layer_importance, llm_drop_importance
from modlab.analysis.report import JobResult, PlotSpec, fmt


def run(c, target, progress) -> JobResult:
    subject, batches, imp = target.subject, target.batches, c.analysis.importance
    L = subject.n_layer
    llm = llm_drop_importance(subject, batches, progress.task("LLM-Drop importance", sum(map(len, batches.values()))))
    tables = {"llm_drop": llm}
    val = {(r["task"], r["layer"], r["sublayer"]): r["importance"] for r in llm}
    sublayers = ("attn", "mlp", "block")
    plots = [
        PlotSpec(
            "per_layer",
            "llm_drop.png",
            {
                "panels": {t: {s: [val[(t, i, s)] for i in range(L)] for s in sublayers} for t in batches},
                "ylabel": "1 - cos(x, x + F(x))",
                "title": "LLM-Drop importance",
            },
        )
    ]
    columns = ["layer"] + [f"{t} {s}" for t in batches for s in ("attn", "mlp")]
    rows = [[i, *[fmt(val[(t, i, s)]) for t in batches for s in ("attn", "mlp")]] for i in range(L)]
    shown = [("LLM-Drop importance 1 - cos(x, x + F(LN(x)))", columns, rows)]
    if imp.drop_layer:
        metrics = {}
        tasks = tuple(t for t in ("mmu", "t2i") if t in batches)
        if imp.metrics and tasks and target.task_metrics is not None:
            metrics = target.task_metrics(imp, tasks)
        drop = drop_layer_importance(
            subject,
            batches,
            metrics,
            seed=c.seed,
            advance=progress.task("drop one layer (batches)", (L + 1) * sum(map(len, batches.values()))),
        )
        # a causal LM's metric is its perplexity
        drop += [
            {**r, "metric": "lm_ppl", "value": math.exp(r["value"])}
            for r in drop
            if r["task"] == "lm" and r["metric"] == "loss"
        ]
        tables["drop_layer"] = drop
        names = list(dict.fromkeys((r["task"], r["metric"]) for r in drop))
        got = {(r["dropped"], r["task"], r["metric"]): r["value"] for r in drop}
        panels = {
            f"{t} {m}": {"layer dropped": [got[(i, t, m)] for i in range(L)], "full model": [got[(-1, t, m)]] * L}
            for t, m in names
        }
        plots.append(
            PlotSpec(
                "per_layer",
                "drop_layer.png",
                {
                    "panels": panels,
                    "ylabel": "value",
                    "title": "drop one layer at evaluation",
                    "log_panels": [name for name in panels if name.endswith(("ppl", "loss"))],
                },
            )
        )
        rows = [["none" if d < 0 else d, *[fmt(got[(d, t, m)]) for t, m in names]] for d in range(-1, L)]
        columns = ["dropped"] + [f"{t} {m}" if m == "loss" else m for t, m in names]
        shown.append(("drop one layer: task losses and metrics", columns, rows))
    return JobResult(tables=tables, shown=shown, plots=plots)
