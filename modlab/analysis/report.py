"""What an analysis job returns (plain data) and the one writer that turns it into files and
tables: <table>.csv per table, PNG plots, extra files (e.g. routing_plan.yaml), results.json and
the rich tables on the console. Also the progress bar the jobs advance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from modlab.outputs import write_csv
from modlab.progress import INTERVAL_S, ProgressLines


@dataclass
class PlotSpec:
    """A plot to draw: `kind` names a function of modlab.analysis.plots (plot_<kind>), called with
    `args` and the file's path."""

    kind: str  # per_layer | bars | attention_maps
    file: str
    args: dict


@dataclass
class JobResult:
    tables: dict[str, list[dict]]  # written as <name>.csv, and kept in results.json
    shown: list[tuple[str, list[str], list[list]]]  # rich tables: (title, columns, rows)
    plots: list[PlotSpec] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # more files: {name: text}
    extra: dict = field(default_factory=dict)  # more for results.json
    notes: list[str] = field(default_factory=list)  # printed after the tables
    # a part that failed after the rest was computed (e.g. a routing plan out of reach): the
    # results are written all the same, then the command ends with this one-line error
    error: str | None = None


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(result: JobResult, out: Path, header: dict, seconds: float) -> dict:
    """Write every file of the job into `out`, print its tables; returns results.json's content."""
    # matplotlib only when a figure is drawn
    from modlab.analysis import plots

    out = Path(out)
    result.notes = [n.replace("{out}", str(out)) for n in result.notes]
    files = [write_csv(rows, out / f"{name}.csv").name for name, rows in result.tables.items()]
    for p in result.plots:
        getattr(plots, f"plot_{p.kind}")(path=out / p.file, **p.args)
        files.append(p.file)
    for name, text in result.files.items():
        (out / name).write_text(text)
        files.append(name)
    summary = {
        **header,
        "seconds": round(seconds, 2),
        "files": files + ["results.json"],
        "results": result.tables,
        **result.extra,
    }
    if result.notes:
        summary["notes"] = result.notes
    if result.error:
        summary["error"] = result.error
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_tables(result, out, seconds)
    return summary


def print_tables(result: JobResult, out: Path, seconds: float) -> None:
    console = Console()
    for title, columns, rows in result.shown:
        table = Table(title=title, header_style="bold")
        for i, col in enumerate(columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*[str(v) for v in row])
        console.print(table)
    for note in result.notes:
        console.print(note, highlight=False)
    console.print(
        f"{seconds:.1f} s; results.json, {len(result.tables)} CSV, {len(result.plots)} PNG in [bold]{out}[/bold]"
    )


class Progress:
    """A rich progress bar, and progress lines for the log file and a piped console
    (modlab.progress); `task(name, total)` returns the callable that advances both by one."""

    def __init__(self, interval_s: float | None = None):
        self.lines = ProgressLines(INTERVAL_S if interval_s is None else interval_s)

    def __enter__(self):
        self.bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.bar.__enter__()
        return self

    def task(self, name: str, total: int):
        tid = self.bar.add_task(name, total=total)
        line = self.lines.stage(name, total)

        def advance() -> None:
            self.bar.advance(tid)
            line()

        return advance

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
