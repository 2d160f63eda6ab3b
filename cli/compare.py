"""`modlab compare DIR [DIR...]`: metrics and training FLOPs of several runs (or every run of a
sweep directory) in one table, compare.csv, results.json and a Pareto plot (training FLOPs per
step vs each task metric)."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from modlab.analysis.compare import COST, comparison_rows, failed_runs, higher_is_better
from modlab.cli.runtime import run_dir
from modlab.cli.schema import validate
from modlab.outputs import write_csv


def compare(cfg: DictConfig) -> dict:
    c = validate(cfg)
    from rich.console import Console
    from rich.table import Table

    from modlab.analysis.plots import plot_pareto

    rows, metrics = comparison_rows(c.runs)
    failed = failed_runs(c.runs)
    out = run_dir()
    columns = [k for k in (COST, "train/flops_ratio", *metrics, "params", "train_seconds") if any(k in r for r in rows)]
    write_csv([{k: r.get(k) for k in ("label", *columns, "run")} for r in rows], out / "compare.csv")
    files = ["compare.csv"]
    if metrics and any(r.get(COST) is not None for r in rows):
        plot_pareto(rows, COST, {m: higher_is_better(m) for m in metrics}, out / "pareto.png")
        files.append("pareto.png")
    (out / "results.json").write_text(
        json.dumps({"runs": rows, "failed": failed, "metrics": metrics, "files": files + ["results.json"]}, indent=2)
        + "\n"
    )

    table = Table(title=f"{len(rows)} runs", header_style="bold")
    table.add_column("run")
    for col in columns:
        table.add_column(col.replace("train/", "").replace("test/", ""), justify="right")
    for r in rows:
        table.add_row(r["label"], *[_fmt(r.get(k)) for k in columns])
    console = Console()
    console.print(table)
    for f in failed:
        console.print(f"[bold red]failed[/bold red] {f['run']}: {f['error']}", highlight=False)
    console.print(f"compare.csv, results.json{', pareto.png' if 'pareto.png' in files else ''} in [bold]{out}[/bold]")
    return {"runs": rows, "failed": failed}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if abs(v) >= 1e5 else f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)
