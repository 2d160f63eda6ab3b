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
        Command("generate", "generate", "sample T2I images (PNG grid) and MMU answers (text) from a checkpoint",
                "modlab generate ckpt_path=PATH"),
    )
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
    console.print("\nHydra flags work as usual: -m (multirun sweeps), --cfg job, --info, hydra.run.dir=...", highlight=False)
    console.print("Set MODLAB_DEBUG=1 to see full tracebacks.")


def rewrite_argv(argv: list[str]) -> list[str]:
    """Turn `modlab <command> args...` into Hydra's argv (`--config-name=<cfg> args...`)."""
    if argv and (argv[0].startswith("--config-name") or argv[0] in ("-cn",)):
        return argv  # already Hydra's form (e.g. a Lightning DDP child relaunch)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown command '{command}' (commands: {', '.join(COMMANDS)})")
    return [f"--config-name={COMMANDS[command].config_name}", *rest]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
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
