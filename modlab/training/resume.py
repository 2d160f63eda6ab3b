"""Exact resume: what a checkpoint needs beyond Lightning's own state so that a killed run,
resumed with `trainer.fit(ckpt_path=...)`, finishes with the metrics of an uninterrupted run.

Lightning restores the weights, optimiser, LR schedulers, loop counters (hence the capacity
schedule, a function of the global step) and callback states. It does not keep

- the random number generators (Python, NumPy, torch CPU and CUDA): `ResumeState` saves them in
  its callback state and restores them before training continues;
- the position in the training data: `ResumableDataLoader` (with `ResumableRandomSampler`) is a
  DataLoader whose `state_dict` is the seed of the current pass's permutation and the batches it
  has yielded; Lightning's CombinedLoader saves it in the fit loop's state and loads it back, and
  the next pass replays that permutation from that batch on without drawing anything from the
  generators (the draws of the interrupted pass are already in the saved generator states).

Exactness assumes one process and `data.num_workers=0` (worker processes seed their own
generators when they start; with workers the position is restored, the workers' draws are not).

Plain Python (no torch at import), so the command line can resolve `resume=` cheaply.
"""

from __future__ import annotations

import csv
import io
import os
import random
from pathlib import Path

import yaml

from modlab.errors import CheckpointError, ConfigError

RUN_MARKERS = (".hydra", "metrics.json", "checkpoints")


def holds_a_run(directory: str | Path) -> bool:
    """Whether a directory already holds a modlab run (its config, metrics or checkpoints)."""
    d = Path(directory)
    return d.is_dir() and any((d / m).exists() for m in RUN_MARKERS)


def resume_target(target: str) -> tuple[Path, Path]:
    """(the run directory, the checkpoint to resume from) for `resume=<run dir or checkpoint>`."""
    p = Path(target)
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise CheckpointError(f"resume '{target}' has no checkpoints/last.ckpt to resume from")
        return p, ckpt
    if p.is_file():
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return run, p
    raise CheckpointError(f"resume '{target}' does not exist (give a run directory or a checkpoint)")


def _value(arg: str) -> str:
    return arg.split("=", 1)[1]


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~") if "=" in arg else ""


def train_argv(args: list[str]) -> list[str]:
    """`modlab train` arguments, checked and completed before Hydra writes anything:

    - `resume=<run dir or checkpoint>`: the original run's overrides (its .hydra/overrides.yaml)
      come first, so the run is composed as it was (arguments given now still win), and the run
      continues in its own directory;
    - `hydra.run.dir=<a directory that holds a run>` without resume is refused: a new run never
      overwrites another (nor does `-m hydra.sweep.dir=<a sweep>`)."""
    keys = {_key(a): a for a in args}
    if "resume" not in keys:
        for key in ("hydra.run.dir", "hydra.sweep.dir"):
            if key in keys and (holds_a_run(_value(keys[key])) or _holds_jobs(_value(keys[key]))):
                raise ConfigError(
                    f"{key}={_value(keys[key])} already holds a run; choose a new directory, "
                    f"or continue that run with resume={_value(keys[key])}"
                )
        return args
    if "-m" in args or "--multirun" in args:
        raise ConfigError("resume= continues one run; resume each job of a sweep on its own")
    run, ckpt = resume_target(_value(keys["resume"]))
    overrides_file = run / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise CheckpointError(f"resume: '{run}' is not a modlab run directory (no .hydra/overrides.yaml)")

    try:
        original = yaml.safe_load(overrides_file.read_text()) or []
    except yaml.YAMLError:
        raise CheckpointError(f"resume: {overrides_file} is not valid YAML") from None
    check_resume_checkpoint(ckpt)  # before Hydra writes into the run directory
    given = {_key(a) for a in args}
    kept = [o for o in original if isinstance(o, str) and _key(o) not in given | {"resume", "hydra.run.dir"}]
    return [*kept, *[a for a in args if _key(a) != "hydra.run.dir"], f"hydra.run.dir={run}"]


def logged_rows_before(metrics_csv: Path, step: int) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv logged before global step `step` (the step a resumed run
    continues from), each without its empty cells, as the text the CSV holds (written back
    unchanged). The rows from `step` on are dropped: the resumed run logs those steps again."""
    if not metrics_csv.is_file():
        return []
    with metrics_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if v not in ("", None)} for row in rows if int(float(row["step"])) < step]


def _holds_jobs(directory: str) -> bool:
    d = Path(directory)
    return d.is_dir() and any(holds_a_run(c) for c in d.iterdir() if c.is_dir())


# ---- what runs inside the Trainer (torch and Lightning imported on use) ---------------------------


def rng_states() -> dict:
    """Every global generator's state, in types a weights_only torch.load accepts."""
    # torch stays out of `modlab --help`, argument rewriting and config validation
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    # torch stays out of `modlab --help`, argument rewriting and config validation
    import numpy as np
    import torch

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_rank_streams(seed: int, rank: int) -> None:
    """Give process `rank` (> 0) of a data-parallel run generators of its own. Every process is
    seeded alike (the same initial weights; Lightning's DistributedSampler shares one permutation
    through PL_GLOBAL_SEED), but the draws made per row (LM window offsets, captions, MaskGIT
    masks, caption dropout) come from the global generators: seeded alike, rank 1 would draw
    exactly what rank 0 draws, and a 2-process run would train on every random window twice.
    PL_GLOBAL_SEED is left as it is, so the shards of the permutation still do not overlap."""
    # torch stays out of `modlab --help`, argument rewriting and config validation
    import numpy as np
    import torch

    derived = (seed + 1_000_003 * rank) % 2**32
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def resume_state_callback():
    # torch and Lightning only when a run trains: `modlab train` rewrites its arguments (train_argv)
    # with this module before anything heavy is imported
    import torch
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback

    class ResumeState(Callback):
        """Saves the generators' states in every checkpoint; restores them on resume (Lightning
        loads callback states before training continues; its sanity check runs with isolated
        generators, so nothing draws from them before the first resumed batch). In a
        data-parallel run every process gets generators of its own (`seed_rank_streams`) and
        the checkpoint keeps each process's states."""

        rank, world = 0, 1

        def setup(self, trainer, pl_module, stage: str) -> None:
            self.rank, self.world = trainer.global_rank, trainer.world_size
            if stage == "fit" and self.rank > 0:  # before any training batch is drawn
                seed_rank_streams(int(os.environ.get("PL_GLOBAL_SEED", 0)), self.rank)

        def state_dict(self) -> dict:
            state = {"rng": rng_states()}
            if self.world > 1:  # every process builds the checkpoint (rank 0 writes it): a collective is safe
                # as bytes: gloo's all_gather_object cannot pickle tensors with this torch
                buf = io.BytesIO()
                torch.save(state["rng"], buf)
                per_rank = [None] * self.world
                dist.all_gather_object(per_rank, buf.getvalue())
                state["rng_per_rank"] = [torch.load(io.BytesIO(b), weights_only=True) for b in per_rank]
            return state

        def load_state_dict(self, state_dict: dict) -> None:
            per_rank = state_dict.get("rng_per_rank") or []
            if len(per_rank) == self.world:  # each process continues its own streams
                set_rng_states(per_rank[self.rank])
            elif "rng" in state_dict:  # saved by a run of another size: not exact, but no two ranks alike
                set_rng_states(state_dict["rng"])
                if self.rank > 0:
                    seed_rank_streams(int(state_dict["rng"]["torch"].sum()), self.rank)  # differs per save

    return ResumeState()


def resumable_loader(dataset, batch_size: int, **kwargs):
    """A shuffled training DataLoader whose position is part of the checkpoint (see the module
    docstring); the same batches as DataLoader(shuffle=True) draws, from the same generator draws."""
    return _classes()[1](dataset, batch_size=batch_size, sampler=_classes()[0](dataset), drop_last=True, **kwargs)


def link_loaders(loaders) -> None:
    """The training loaders of one CombinedLoader: each one's state says whether the epoch
    (the pass of the longest one) had ended, in which case every loader starts a fresh pass."""
    loaders = list(loaders)
    for dl in loaders:
        if hasattr(dl, "siblings"):
            dl.siblings = loaders


_CLASSES: list = []


def _classes():
    if _CLASSES:
        return _CLASSES
    # torch stays out of `modlab --help`, argument rewriting and config validation
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    class ResumableRandomSampler(RandomSampler):
        """RandomSampler (the same draws) that remembers its pass's seed and can replay a pass
        from a given index without drawing."""

        seed: int | None = None
        _replay: tuple[int, int] | None = None

        def replay(self, seed: int, skip: int) -> None:
            self._replay = (seed, skip)

        def __iter__(self):
            if self._replay is not None:
                (seed, skip), self._replay = self._replay, None
            else:
                seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
            self.seed = seed
            self.generator = torch.Generator().manual_seed(seed)
            try:
                it = super().__iter__()
                for _ in range(skip):
                    next(it)
                yield from it
            finally:
                self.generator = None

    class _Counting:
        def __init__(self, loader, it, start: int):
            self.loader, self.it = loader, it
            loader.yielded = start

        def __iter__(self):
            return self

        def __next__(self):
            batch = next(self.it)
            self.loader.yielded += 1
            return batch

        def __len__(self):
            return len(self.it)

    class ResumableDataLoader(DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.yielded, self.siblings, self._resume = 0, [self], None

        def state_dict(self) -> dict:
            longest = max(self.siblings, key=len)
            return {
                "seed": getattr(self.sampler, "seed", None),
                "batches": self.yielded,
                "epoch_end": longest.yielded >= len(longest),
            }

        def load_state_dict(self, state_dict: dict) -> None:
            self._resume = dict(state_dict)

        def __iter__(self):
            state, self._resume = self._resume, None
            if state is None or state.get("epoch_end"):
                return _Counting(self, super().__iter__(), 0)  # a fresh pass, as the run would start one
            sampler, start = self.sampler, int(state["batches"])
            if isinstance(sampler, ResumableRandomSampler) and state.get("seed") is not None:
                sampler.replay(int(state["seed"]), start * self.batch_size)
            # creating the iterator draws a base seed (for workers): the interrupted pass drew it already
            saved = torch.get_rng_state()
            it = super().__iter__()
            torch.set_rng_state(saved)
            if start >= len(self):  # this pass had ended (a shorter loader, cycled): end it now
                it = iter(())
            elif not isinstance(sampler, ResumableRandomSampler) and self.num_workers == 0:
                for _ in range(start):  # e.g. Lightning's DistributedSampler: skip indices, load nothing
                    next(it._sampler_iter)
            return _Counting(self, it, start)

    _CLASSES.extend([ResumableRandomSampler, ResumableDataLoader])
    return _CLASSES


def check_resume_checkpoint(ckpt_path: Path) -> int:
    """The global step of `ckpt_path`; a one-line CheckpointError unless Lightning can resume from it."""
    # torch stays out of `modlab --help`, argument rewriting and config validation
    from modlab.training.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(str(ckpt_path), "resume checkpoint", mmap=True)
    missing = [k for k in ("state_dict", "optimizer_states", "loops") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"resume checkpoint '{ckpt_path}' cannot continue a run (no {', '.join(missing)}: "
            "a weights-only or foreign checkpoint; fine-tune from it with init_from= instead)"
        )
    return int(ckpt.get("global_step", 0))
