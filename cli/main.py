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

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    usage: str
    function: str  # "module:function" run with the composed config (imported only then)

    def run(self, cfg):
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)(cfg)


# The commands, in one table: the dispatcher, the help and the Hydra app read it. Each command's
# config is conf/<name>.yaml, typed by its schema in modlab.cli.schema.
COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "train", "train or fine-tune a model", "modlab train +experiment=showo_dense", "modlab.cli.train:train"
        ),
        Command(
            "eval",
            "evaluate a checkpoint on the held-out test split",
            "modlab eval ckpt_path=PATH",
            "modlab.cli.evaluate:evaluate",
        ),
        Command(
            "generate",
            "sample T2I images (PNG grid) and MMU answers (text) from a checkpoint",
            "modlab generate ckpt_path=PATH",
            "modlab.cli.generate:generate",
        ),
        Command(
            "analyze",
            "analyse a checkpoint: attention, importance, redundancy (+ routing plan), interactions",
            "modlab analyze redundancy ckpt_path=PATH",
            "modlab.cli.analyze:analyze",
        ),
        Command(
            "compare",
            "one table of metrics and FLOPs across run directories, and a Pareto plot",
            "modlab compare outputs/train/showo_dense/RUN outputs/train/showo_unimod/RUN",
            "modlab.cli.compare:compare",
        ),
    )
}


# Hydra plugins of optional extras: (an argument that needs one, its module, its package, the extra)
PLUGINS = (
    ("hydra/launcher=submitit_", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "submitit"),
    ("hydra/sweeper=optuna", "hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper", "optuna"),
    ("hparams_search=", "hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper", "optuna"),
)


def check_plugins(args: list[str]) -> None:
    """A missing optional plugin in one line (Hydra would say only that the option or class is unknown)."""
    import importlib.util

    for arg in args:
        for prefix, module, package, extra in PLUGINS:
            if arg.lstrip("+~").startswith(prefix) and not arg.endswith("=null"):
                try:
                    found = importlib.util.find_spec(module) is not None
                except (ImportError, ValueError):
                    found = False
                if not found:
                    raise UserError(f"{arg} needs the {package} package (pip install 'modlab[{extra}]')")
        if arg.lstrip("+").startswith("hydra/launcher=submitit_slurm"):
            import shutil

            if shutil.which("srun") is None:  # submitit would fail with a traceback once the sweep starts
                raise UserError(
                    f"{arg} submits SLURM jobs, and this machine has no SLURM (no srun): run it on the "
                    "cluster, or use hydra/launcher=submitit_local here"
                )


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2."""


def _table(header: str, rows: list[tuple[str, str]]):
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column(header, style="bold cyan")
    table.add_column("what it does")
    for row in rows:
        table.add_row(*row)
    return table


def print_help() -> None:
    from rich.console import Console
    from rich.markup import escape

    from modlab.families import REGISTRY

    console = Console()
    console.print("[bold]modlab[/bold] — dynamic-depth transformers (MoD, UniMoD, MindSkip) from one command line\n")
    console.print(escape("usage: modlab <command> [hydra overrides...]"), highlight=False)
    console.print("       modlab <command> --help    (the command's config groups and options)\n", highlight=False)
    console.print(_table("command", [(command.name, command.summary) for command in COMMANDS.values()]))
    console.print("\nexamples:", style="bold")
    for command in COMMANDS.values():
        console.print(f"  {command.usage}", highlight=False)
    console.print("\nmodel families (model.arch):", style="bold")
    console.print(_table("family", [(family.name, family.summary) for family in REGISTRY.values()]))
    console.print(
        "\nHydra flags work as usual: -m (multirun sweeps), --cfg job, --info, hydra.run.dir=...", highlight=False
    )
    console.print("Set MODLAB_DEBUG=1 to see full tracebacks.")


def print_analysis_jobs() -> None:
    from rich.console import Console

    from modlab.analysis.jobs import JOBS

    console = Console()
    console.print("usage: modlab analyze <job> ckpt_path=PATH [overrides...]\n", highlight=False)
    console.print(
        _table("job", [(job.name, f"{job.summary} (families: {', '.join(job.families())})") for job in JOBS.values()])
    )
    console.print("\nEach job writes results.json, CSV tables and PNG plots into its run directory.", highlight=False)
    console.print(
        "A Hugging Face LM needs no checkpoint: model=hf_causal_lm model.path=DIR instead of ckpt_path.",
        highlight=False,
    )


def rewrite_argv(argv: list[str]) -> list[str]:
    """Turn `modlab <command> args...` into Hydra's argv (`--config-name=<command> args...`)."""
    if argv and (argv[0].startswith("--config-name") or argv[0] in ("-cn",)):
        return argv  # already Hydra's form (e.g. a Lightning DDP child relaunch)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown command '{command}' (commands: {', '.join(COMMANDS)})")
    if command == "analyze":  # `analyze <job> ...` -> `--config-name=analyze analysis=<job> ...`
        from modlab.analysis.jobs import JOBS

        job = rest[0] if rest else ""
        if job not in JOBS:
            raise UserError(f"unknown analysis job '{job}' (jobs: {', '.join(JOBS)})")
        rest = [f"analysis={job}", *rest[1:]]
    if command == "compare":  # run directories are positional: `runs=[...]` for Hydra
        rest = compare_argv(rest)
    check_plugins(rest)
    if command == "train":  # resume=, and never a new run over an existing one
        from modlab.errors import ModlabError
        from modlab.training.resume import train_argv

        try:
            rest = train_argv(rest)
        except ModlabError as e:
            raise UserError(str(e)) from None
    return [f"--config-name={command}", *rest]


def compare_argv(args: list[str]) -> list[str]:
    """`compare DIR... key=value...` -> `runs=['DIR',...] key=value...` (quoted: any path is fine)."""
    dirs = [arg for arg in args if "=" not in arg and not arg.startswith("-")]
    if not dirs:
        return args
    quoted = ",".join("'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'" for path in dirs)
    return [f"runs=[{quoted}]", *[arg for arg in args if arg not in dirs]]


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
    except UserError as error:
        fail(str(error))
    sys.argv = [sys.argv[0], *hydra_argv]
    from modlab.cli.errors import run_reporting_errors

    run_reporting_errors()


def fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"modlab: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


if __name__ == "__main__":  # Lightning relaunches DDP children through this path
    main()
