"""The files of a run directory that every command writes: metrics.json, CSV tables, and the
rich summary table that closes a run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    """metrics.json: a flat dict, non-finite numbers as null."""
    path = Path(out_dir) / "metrics.json"
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return path


ERROR_FILE = "error.txt"  # a failed sweep job's one-line error, in its directory


def write_error(out_dir: Path, message: str) -> Path:
    path = Path(out_dir) / ERROR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(message.split()) + "\n")
    return path


def write_csv(rows: list[dict], path: Path) -> Path:
    """A list of flat dicts as CSV (columns in first-seen order; lists are written as JSON)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return Path(path)


def format_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}"
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def print_summary(title: str, metrics: dict, out_dir: Path) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, format_value(metrics[k]))
    console = Console()
    console.print(table)
    console.print(f"run directory: [bold]{out_dir}[/bold]")


def finish_run(title: str, metrics: dict, out_dir: Path) -> dict:
    """metrics.json and the summary table: how every command that measures something ends."""
    write_metrics(out_dir, metrics)
    print_summary(title, metrics, out_dir)
    return metrics
