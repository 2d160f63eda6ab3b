"""The one Hydra app behind every `modlab` command (see main.py for the argv rewriting)."""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import modlab.conf
from modlab.cli.schema import register_schemas

CONF_DIR = str(Path(modlab.conf.__file__).parent)

# optuna 2 (hparams_search=...) imports alembic, which logs a line per plugin it sets up at INFO
logging.getLogger("alembic").setLevel(logging.WARNING)

# conf/hydra/launcher/submitit_*.yaml replace the submitit plugin's options of the same names and
# list every key themselves; Hydra also checks them against the plugin's schemas, and says so
warnings.filterwarnings("ignore", message=r"(?s).*hydra/launcher/submitit_\w+' is validated against ConfigStore schema")

# One id per process, so two runs started in the same second never share a directory (the pid
# differs) and every interpolation of it within a run agrees.
RUN_ID = time.strftime("%Y-%m-%d_%H-%M-%S") + f"_{os.getpid()}"


def experiment_of_checkpoint(path: str, hf_path: str | None = None) -> str:
    """`outputs/train/<experiment>/<run>/checkpoints/x.ckpt` -> `<experiment>`; a Hugging Face
    directory (`modlab analyze ... model.path=DIR`, no checkpoint) -> `hf_<its name>`."""
    if path is None and hf_path:
        return f"hf_{Path(hf_path).name}"
    found = re.search(r"train/([^/]+)/[^/]+/checkpoints/[^/]+$", str(path))
    return found.group(1) if found else "checkpoint"


# cached, so that a job run in another process (hydra/launcher=submitit_*) resolves the sweep
# directory to the launching process's id: Hydra hands each job the master config's resolver cache
OmegaConf.register_new_resolver("modlab_run_id", lambda: RUN_ID, replace=True, use_cache=True)
OmegaConf.register_new_resolver("modlab_experiment_of", experiment_of_checkpoint, replace=True)


def devices_per_node(devices: int) -> int:
    """hydra/launcher=submitit_*'s tasks (and GPUs) per node: trainer.devices, which must be a number
    there (SLURM allots the devices before Lightning could count them: -1, "all", cannot be asked for)."""
    from modlab.errors import ConfigError

    if int(devices) < 1:
        raise ConfigError(
            f"hydra/launcher=submitit_* asks SLURM for trainer.devices per node: set trainer.devices=N, not {devices}"
        )
    return int(devices)


def gpus_per_node(accelerator: str, devices: int) -> int | None:
    """What hydra/launcher=submitit_* asks SLURM for: the trainer's devices on a GPU trainer, no GPU otherwise."""
    return devices_per_node(devices) if accelerator in ("gpu", "cuda") else None


OmegaConf.register_new_resolver("modlab_devices_per_node", devices_per_node, replace=True)
OmegaConf.register_new_resolver("modlab_gpus_per_node", gpus_per_node, replace=True)
register_schemas()


# User errors raised inside a job are kept here instead of propagating: Hydra would first print
# an extra "Error executing job with overrides" line, and in a sweep the other jobs still run.
JOB_ERRORS: list[BaseException] = []


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=None)
def hydra_main(cfg: DictConfig):
    from modlab.cli.errors import user_error_types
    from modlab.cli.main import COMMANDS
    from modlab.cli.runtime import join_submitit_local_tasks

    join_submitit_local_tasks()
    try:
        return COMMANDS[cfg.command].run(cfg)
    except user_error_types() as error:
        if os.environ.get("MODLAB_DEBUG", "") not in ("", "0"):
            raise
        JOB_ERRORS.append((record_failure(error), error))
        return None
    except Exception as error:  # a bug: keeps its traceback; in a sweep the other jobs still run
        record_failure(error)
        raise


class SweepErrors(Callback):
    """After a sweep whose jobs ran in other processes (hydra/launcher=submitit_*), the user errors
    they recorded (each job's error.txt) join JOB_ERRORS, so the sweep ends with the same one line
    as an in-process one (jobs run here have added theirs already)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if JOB_ERRORS:
            return
        from modlab.analysis.compare import failed_runs

        for failed in failed_runs([str(config.hydra.sweep.dir)]):
            job = Path(failed["run"])
            try:
                overrides = " ".join(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
            except (OSError, ValueError):
                overrides = "?"
            # error.txt holds "<type>: <message>"; the message alone, as for an in-process job
            JOB_ERRORS.append((f"job {job.name} ({overrides})", JobError(failed["error"].split(": ", 1)[-1])))


class JobError(Exception):
    """A user error a sweep job reported from another process."""


def record_failure(exc: BaseException) -> str:
    """In a sweep: the failed job's one-line error goes to its directory (error.txt, read by
    `modlab compare`); returns the job's label ("" outside a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from modlab.cli.errors import one_line
    from modlab.outputs import write_error

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return ""
    label = f"job {hc.job.num} ({' '.join(hc.overrides.task)})"
    write_error(Path(hc.runtime.output_dir), f"{type(exc).__name__}: {one_line(exc)}")
    return label
