"""`modlab analyze attention`: the share of attention queries give to image tokens, per layer,
task and query modality (beside the share if attention were spread evenly), and the mean
attention map per layer."""

from __future__ import annotations

from modlab.analysis.report import JobResult, PlotSpec, fmt


def run(c, target, progress) -> JobResult:
    from modlab.analysis.attention_stats import attention_analysis

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
