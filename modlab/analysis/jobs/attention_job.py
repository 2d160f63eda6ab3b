"""`modlab analyze attention`: the share of attention queries give to image tokens, per layer,
task and query modality (beside the share if attention were spread evenly), and the mean
attention map per layer. A text-only model (a causal LM) gets where its queries look instead:
the first token, itself, the previous token, the mean distance back."""

from __future__ import annotations

from modlab.analysis.attention_stats import attention_analysis, text_attention_rows
from modlab.analysis.report import JobResult, PlotSpec, fmt


def run(c, target, progress) -> JobResult:
    subject, batches = target.subject, target.batches
    advance = progress.task("attention", sum(len(b) for b in batches.values()))
    rows, maps = attention_analysis(subject, batches, advance)
    by = {(r["task"], r["layer"], r["query"]): r["to_image"] for r in rows}
    layers = range(subject.n_layer)
    queries = ("all", "text", "image")
    panels = {
        t: {f"{q} queries": [by[(t, i, q)] for i in layers if (t, i, q) in by] for q in queries if (t, 0, q) in by}
        for t in batches
    }
    even = {(r["task"], r["query"]): r["uniform_to_image"] for r in rows}
    shown = [
        (t, i, *[f"{fmt(by[(t, i, q)])} ({fmt(even.get((t, q)))})" if (t, i, q) in by else "-" for q in queries])
        for t in batches
        for i in layers
    ]
    plots = [
        PlotSpec(
            "per_layer",
            "attention_fractions.png",
            {
                "panels": panels,
                "ylabel": "attention on image tokens",
                "title": "share of attention on image tokens (the rest is on text / special tokens)",
            },
        ),
        PlotSpec("attention_maps", "attention_maps.png", {"maps": maps}),
    ]
    if not any(b["is_image"].any() for task_batches in batches.values() for b in task_batches):
        return text_only_result(rows, maps, plots[1:], subject.n_layer)
    return JobResult(
        tables={"attention_fractions": rows},
        shown=[
            (
                "share of attention on image tokens (in brackets: if spread evenly over the visible keys)",
                ["task", "layer", "all queries", "text queries", "image queries"],
                shown,
            )
        ],
        plots=plots,
    )


def text_only_result(rows, maps, plots, n_layer: int) -> JobResult:
    """A text-only model (a causal LM): no image share to report; where its queries look instead."""
    text_rows = text_attention_rows(maps)
    shown = [
        (
            r["task"],
            r["layer"],
            fmt(r["to_first"]),
            fmt(r["to_self"]),
            fmt(r["to_previous"]),
            f"{r['mean_distance']:.1f}",
        )
        for r in text_rows
    ]
    return JobResult(
        tables={"attention_text": text_rows, "attention_fractions": rows},
        shown=[
            (
                "where queries look (mean attention maps over heads and rows)",
                ["task", "layer", "first token", "itself", "previous token", "mean distance"],
                shown,
            )
        ],
        plots=plots,
    )
