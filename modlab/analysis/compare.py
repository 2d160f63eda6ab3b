"""Collect finished runs (their metrics.json and Hydra config) into one table for comparison.

A path is a run directory (it holds metrics.json) or any directory above runs, e.g. a sweep
directory: every run below it is taken. Plain files only: no torch needed.

Runs that differ only in `seed` form a group (`seed_groups`): mean, sample std and the 95 %
t-interval of each metric over the group's seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from modlab.errors import DataError
from modlab.outputs import ERROR_FILE

COST = "train/flops_per_step"
LOWER_IS_BETTER = ("ppl", "fid", "loss")


def failed_runs(paths: list[str]) -> list[dict]:
    """The failed jobs of sweeps: directories with an error.txt and no metrics.json, and their error."""
    failed = []
    for p in map(Path, paths):
        for e in sorted(p.rglob(ERROR_FILE)) if p.is_dir() else []:
            if not (e.parent / "metrics.json").is_file():
                failed.append({"run": str(e.parent), "error": e.read_text(errors="replace").strip()})
    return failed


def find_runs(paths: list[str]) -> list[Path]:
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"run directory '{p}' does not exist")
        if not p.is_dir():
            raise DataError(f"'{p}' is a file, not a run or sweep directory")
        found = [p] if (p / "metrics.json").is_file() else sorted(m.parent for m in p.rglob("metrics.json"))
        if not found and not failed_runs([str(p)]):
            raise DataError(f"'{p}' holds no finished run (no metrics.json in it or below it)")
        runs += [r for r in found if r not in runs]
    return runs


def read_run(run: Path) -> dict:
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{run / 'metrics.json'} is not valid JSON ({type(e).__name__})") from None
    cfg, overrides = {}, []
    if (run / ".hydra" / "config.yaml").is_file():
        cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}
    if (run / ".hydra" / "overrides.yaml").is_file():
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    return {
        "run": str(run),
        "experiment": cfg.get("experiment_name", run.name),
        "overrides": overrides,
        "seed": cfg.get("seed"),
        "metrics": metrics,
    }


def label_runs(runs: list[dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """The experiment name, plus the overrides that tell runs of one experiment apart (leaving
    out overrides that start with one of `ignore`, e.g. "seed=")."""
    labels = []
    skip = ("hydra.", "paths.", *ignore)
    for r in runs:
        same = [o for o in runs if o["experiment"] == r["experiment"]]
        if len(same) == 1:
            labels.append(r["experiment"])
            continue
        kept = [[o for o in x["overrides"] if not o.startswith(skip)] for x in same]
        common = set.intersection(*(set(k) for k in kept))
        own = [o for o in r["overrides"] if o not in common and not o.startswith(skip)]
        if ignore and not own:
            labels.append(r["experiment"])
            continue
        labels.append(" ".join([r["experiment"], *own]) if own else f"{r['experiment']} ({Path(r['run']).name})")
    return labels


# test keys that describe how a routed model routed (modlab.training.unified), not how well it does:
# kept in each run's row, left out of the compared metrics and the Pareto plots
ROUTING_DIAGNOSTICS = ("test/kept/", "test/kept_dense_min/", "test/capacity/", "test/lm_ppl_causal")


def comparison_rows(paths: list[str]) -> tuple[list[dict], list[str]]:
    """One flat row per run ({label, group, seed, run, <metrics>}: `group` is the label without
    the seed) and the metric keys that are task metrics."""
    runs = [read_run(r) for r in find_runs(paths)]
    rows = [
        {
            "label": lab,
            "group": group,
            "seed": r["seed"],
            "run": r["run"],
            **{k: v for k, v in r["metrics"].items() if isinstance(v, (int, float)) or v is None},
        }
        for lab, group, r in zip(label_runs(runs), label_runs(runs, ignore=("seed=",)), runs)
    ]
    metrics = sorted({k for r in rows for k in r if k.startswith("test/") and not k.startswith(ROUTING_DIAGNOSTICS)})
    return rows, metrics


def higher_is_better(metric: str) -> bool:
    return not any(s in metric for s in LOWER_IS_BETTER)


def seed_groups(rows: list[dict], keys: list[str]) -> list[dict]:
    """One row per group of runs that differ only in their seed: {label, n, seeds, <key>,
    <key>_std, <key>_ci95} (mean, sample std and 95 % t-interval half-width over the seeds)."""
    from modlab.analysis.stats import spread

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for label, members in groups.items():
        g = {"label": label, "n": len(members), "seeds": sorted(m["seed"] for m in members if m["seed"] is not None)}
        for k in keys:
            values = [float(m[k]) for m in members if isinstance(m.get(k), (int, float))]
            if values:
                st = spread(values)
                g |= {k: st["mean"], f"{k}_std": st["std"], f"{k}_ci95": st["ci95"]}
        out.append(g)
    return out


def write_comparison(paths: list[str], out: Path) -> dict:
    """`modlab compare`: compare.csv (and compare_seeds.csv when runs differ only in seed),
    pareto.png and results.json in `out`, the tables printed; returns what results.json holds."""
    import json

    from rich.console import Console
    from rich.table import Table

    from modlab.analysis.plots import plot_pareto
    from modlab.outputs import write_csv

    rows, metrics = comparison_rows(paths)
    failed = failed_runs(paths)
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
    skip_rows = _skip_pareto(groups if seeded else rows, rows, out)
    if skip_rows:
        files += ["skip_pareto.csv", "skip_pareto.png"]
    summary = {"runs": rows, "failed": failed, "metrics": metrics, "files": files + ["results.json"]}
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
    if skip_rows:
        table = Table(title="MindSkip vs static attention drop (skip_pareto.csv, skip_pareto.png)", header_style="bold")
        for col in ("run", "n", "skipped / seq", "ppl", "static drop ppl", "verdict"):
            table.add_column(col, justify="left" if col in ("run", "verdict") else "right")
        for r in skip_rows:
            table.add_row(
                r["label"],
                str(r["n"]),
                _fmt(r["skipped_per_seq"]) + (f" ± {_fmt(r['skipped_std'])}" if r["skipped_std"] else ""),
                _fmt(r["ppl"]) + (f" ± {_fmt(r['ppl_std'])}" if r["ppl_std"] else ""),
                _fmt(r["static_drop_ppl"]),
                r["verdict"],
            )
        console.print(table)
    for job in failed:
        console.print(f"[bold red]failed[/bold red] {job['run']}: {job['error']}", highlight=False)
    console.print(f"{', '.join(files)}, results.json in [bold]{out}[/bold]")
    return {"runs": rows, "failed": failed, **({"seed_groups": groups} if seeded else {})}


def _skip_pareto(points: list[dict], rows: list[dict], out: Path) -> list[dict]:
    """MindSkip runs against the static attention drop (modlab.analysis.skip_pareto), when the
    runs hold both: skip_pareto.csv and skip_pareto.png."""
    from modlab.analysis.plots import plot_skip_pareto
    from modlab.analysis.skip_pareto import skip_pareto_rows, static_curve
    from modlab.outputs import write_csv

    curve = static_curve(rows)
    table = skip_pareto_rows(points, curve)
    if not table or not curve:
        return []
    write_csv(table, out / "skip_pareto.csv")
    plot_skip_pareto(table, curve, out / "skip_pareto.png")
    return table


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3e}" if abs(value) >= 1e5 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)
