"""`modlab <command> [hydra overrides...]` — the console entry point.

This module must stay cheap to import: `modlab` and `modlab --help` print the command list
without importing torch, Lightning or Hydra. Every real command is rewritten into Hydra's own
argv form (`modlab train x=1` -> `--config-name=train x=1`) and handed to the single
`@hydra.main` function in `app.py`. Rewriting instead of stripping keeps `-m`, `--cfg job`,
`--info`, `hydra.run.dir=...` and Lightning's DDP child relaunch working: Lightning restarts each
child as `python <this script> <sys.argv[1:]> hydra.run.dir=...`, so argv that already starts with
`--config-name=` passes through unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    config_name: str
    summary: str
    usage: str


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("train", "train", "train or fine-tune a model", "modlab train +experiment=showo_dense"),
        Command("eval", "eval", "evaluate a checkpoint on the held-out test split", "modlab eval ckpt_path=PATH"),
        Command(
            "generate",
            "generate",
            "sample T2I images (PNG grid) and MMU answers (text) from a checkpoint",
            "modlab generate ckpt_path=PATH",
        ),
        Command(
            "analyze",
            "analyze",
            "analyse a checkpoint: attention, importance, redundancy (+ routing plan), interactions",
            "modlab analyze redundancy ckpt_path=PATH",
        ),
        Command(
            "compare",
            "compare",
            "one table of metrics and FLOPs across run directories, and a Pareto plot",
            "modlab compare outputs/train/showo_dense/RUN outputs/train/showo_unimod/RUN",
        ),
    )
}

# `modlab analyze <job>`: the jobs (modlab.analysis.config.JOBS) and what each writes
ANALYSIS_JOBS = {
    "attention": "attention to text vs image tokens per layer, task and query modality; mean attention maps",
    "importance": "drop-one-layer task losses and metrics; LLM-Drop 1 - cos importance of every sublayer",
    "redundancy": "ARank (rank of Q_h K_h^T) per layer and task; writes a routing plan (routing.plan=<file>)",
    "interactions": "single-task vs joint training; a shared router with a joint budget vs task routers",
}


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2."""


def print_help() -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print("[bold]modlab[/bold] — dynamic-depth transformers (MoD, UniMoD, MindSkip) from one command line\n")
    console.print(escape("usage: modlab <command> [hydra overrides...]"), highlight=False)
    console.print("       modlab <command> --help    (the command's config groups and options)\n", highlight=False)
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column("command", style="bold cyan")
    table.add_column("what it does")
    for c in COMMANDS.values():
        table.add_row(c.name, c.summary)
    console.print(table)
    console.print("\nexamples:", style="bold")
    for c in COMMANDS.values():
        console.print(f"  {c.usage}", highlight=False)
    console.print(
        "\nHydra flags work as usual: -m (multirun sweeps), --cfg job, --info, hydra.run.dir=...", highlight=False
    )
    console.print("Set MODLAB_DEBUG=1 to see full tracebacks.")


def rewrite_argv(argv: list[str]) -> list[str]:
    """Turn `modlab <command> args...` into Hydra's argv (`--config-name=<cfg> args...`)."""
    if argv and (argv[0].startswith("--config-name") or argv[0] in ("-cn",)):
        return argv  # already Hydra's form (e.g. a Lightning DDP child relaunch)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown command '{command}' (commands: {', '.join(COMMANDS)})")
    if command == "analyze":  # `analyze <job> ...` -> `--config-name=analyze analysis=<job> ...`
        job = rest[0] if rest else ""
        if job not in ANALYSIS_JOBS:
            raise UserError(f"unknown analysis job '{job}' (jobs: {', '.join(ANALYSIS_JOBS)})")
        rest = [f"analysis={job}", *rest[1:]]
    if command == "compare":  # run directories are positional: `runs=[...]` for Hydra
        rest = compare_argv(rest)
    return [f"--config-name={COMMANDS[command].config_name}", *rest]


def compare_argv(args: list[str]) -> list[str]:
    """`compare DIR... key=value...` -> `runs=['DIR',...] key=value...` (quoted: any path is fine)."""
    dirs = [a for a in args if "=" not in a and not a.startswith("-")]
    if not dirs:
        return args
    quoted = ",".join("'" + d.replace("\\", "\\\\").replace("'", "\\'") + "'" for d in dirs)
    return [f"runs=[{quoted}]", *[a for a in args if a not in dirs]]


def print_analysis_jobs() -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print("usage: modlab analyze <job> ckpt_path=PATH [overrides...]\n", highlight=False)
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column("job", style="bold cyan")
    table.add_column("what it measures")
    for name, summary in ANALYSIS_JOBS.items():
        table.add_row(name, summary)
    console.print(table)
    console.print("\nEach job writes results.json, CSV tables and PNG plots into its run directory.", highlight=False)
    console.print(
        "Causal LMs: importance and redundancy of an lm_pretrain checkpoint; importance of a Hugging Face LM "
        "with model=hf_causal_lm model.path=DIR instead of ckpt_path.",
        highlight=False,
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
        return
    if argv[0] == "analyze" and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
        print_analysis_jobs()
        return
    try:
        hydra_argv = rewrite_argv(argv)
    except UserError as e:
        fail(str(e))
    sys.argv = [sys.argv[0], *hydra_argv]
    from modlab.cli.errors import run_reporting_errors

    run_reporting_errors()


def fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"modlab: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


if __name__ == "__main__":  # Lightning relaunches DDP children through this path
    main()
