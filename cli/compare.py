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
    c = validate(cfg)
    from rich.console import Console
    from rich.table import Table

    from modlab.analysis.plots import plot_pareto

    rows, metrics = comparison_rows(c.runs)
    out = run_dir()
    columns = [k for k in (COST, "train/flops_ratio", *metrics, "params", "train_seconds") if any(k in r for r in rows)]
    write_csv([{k: r.get(k) for k in ("label", *columns, "run")} for r in rows], out / "compare.csv")
    files = ["compare.csv"]
    groups = seed_groups(rows, columns)
    seeded = any(g["n"] > 1 for g in groups)
    if seeded:
        write_csv(groups, out / "compare_seeds.csv")
        files.append("compare_seeds.csv")
    if metrics and any(r.get(COST) is not None for r in rows):
        plot_pareto(groups if seeded else rows, COST, {m: higher_is_better(m) for m in metrics}, out / "pareto.png")
        files.append("pareto.png")
    summary = {"runs": rows, "metrics": metrics, "files": files + ["results.json"]}
    (out / "results.json").write_text(
        json.dumps(summary | ({"seed_groups": groups} if seeded else {}), indent=2) + "\n"
    )

    table = Table(title=f"{len(rows)} runs", header_style="bold")
    table.add_column("run")
    for col in columns:
        table.add_column(col.replace("train/", "").replace("test/", ""), justify="right")
    for r in rows:
        table.add_row(r["label"], *[_fmt(r.get(k)) for k in columns])
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
        for g in groups:
            cells = [
                _fmt(g.get(k)) + (f" ± {_fmt(g[k + '_std'])}" if g.get(k + "_ci95") is not None else "")
                for k in columns
            ]
            table.add_row(g["label"], str(g["n"]), *cells)
        console.print(table)
    console.print(f"{', '.join(files)}, results.json in [bold]{out}[/bold]")
    return {"runs": rows, **({"seed_groups": groups} if seeded else {})}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if abs(v) >= 1e5 else f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)
