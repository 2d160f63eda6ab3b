"""`modlab compare DIR [DIR...]`: metrics and training FLOPs of several runs (or every run of a
sweep directory) in one table, compare.csv, results.json and a Pareto plot (training FLOPs per
step vs each task metric). Runs that differ only in their seed are also shown as one row each
(mean ± std over seeds, 95 % interval; compare_seeds.csv), and the plot draws those with error bars."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from modlab.analysis.compare import COST, comparison_rows, higher_is_better, seed_groups
from modlab.cli.runtime import run_dir
from modlab.cli.schema import validate
from modlab.outputs import write_csv


def compare(cfg: DictConfig) -> dict:
    config = validate(cfg)
    from rich.console import Console
    from rich.table import Table

    from modlab.analysis.plots import plot_pareto

    rows, metrics = comparison_rows(config.runs)
    out = run_dir()
    columns = [
        key
        for key in (COST, "train/flops_ratio", *metrics, "params", "train_seconds")
        if any(key in row for row in rows)
    ]
    write_csv([{key: row.get(key) for key in ("label", *columns, "run")} for row in rows], out / "compare.csv")
    files = ["compare.csv"]
    groups = seed_groups(rows, columns)
    seeded = any(group["n"] > 1 for group in groups)
    if seeded:
        write_csv(groups, out / "compare_seeds.csv")
        files.append("compare_seeds.csv")
    if metrics and any(row.get(COST) is not None for row in rows):
        plot_pareto(
            groups if seeded else rows,
            COST,
            {metric: higher_is_better(metric) for metric in metrics},
            out / "pareto.png",
        )
        files.append("pareto.png")
    summary = {"runs": rows, "metrics": metrics, "files": files + ["results.json"]}
    (out / "results.json").write_text(
        json.dumps(summary | ({"seed_groups": groups} if seeded else {}), indent=2) + "\n"
    )

    table = Table(title=f"{len(rows)} runs", header_style="bold")
    table.add_column("run")
    for col in columns:
        table.add_column(col.replace("train/", "").replace("test/", ""), justify="right")
    for row in rows:
        table.add_row(row["label"], *[_fmt(row.get(key)) for key in columns])
    console = Console()
    console.print(table)
    if seeded:
        table = Table(
            title="runs that differ only in their seed: mean ± std (95 % intervals in compare_seeds.csv)",
            header_style="bold",
        )
        for col in ("runs", "n", *columns):
            table.add_column(
                col.replace("train/", "").replace("test/", ""), justify="left" if col == "runs" else "right"
            )
        for group in groups:
            cells = [
                _fmt(group.get(key))
                + (f" ± {_fmt(group[key + '_std'])}" if group.get(key + "_ci95") is not None else "")
                for key in columns
            ]
            table.add_row(group["label"], str(group["n"]), *cells)
        console.print(table)
    console.print(f"{', '.join(files)}, results.json in [bold]{out}[/bold]")
    return {"runs": rows, **({"seed_groups": groups} if seeded else {})}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3e}" if abs(value) >= 1e5 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)
