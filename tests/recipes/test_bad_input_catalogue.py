"""The bad-input catalogue: every command given something wrong (an override, a value out of range,
a file missing / empty / corrupt / of the wrong kind, an incompatible checkpoint, a run directory
that already holds a run, an output directory that cannot be written, a full disk) ends in one
line `modlab: error: ...` with exit code 2, and writes or loses nothing.

Each case is (id, arguments, needles), the arguments built by a function of a folder holding the
case's input files. Nearly all fail before any training, so the whole table runs in seconds per case.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import MODLAB, TINY, assert_one_line_error, hiding_modules, run_modlab, save_tiny_unified

FAST = ("+experiment=showo_dense", *TINY)


def _file(d: Path, name: str, data: bytes | str) -> Path:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _run_dir(d: Path, with_checkpoint: bytes | None = None) -> Path:
    """A directory that looks like a finished run (its config, metrics, maybe a checkpoint)."""
    run = d / "old_run"
    _file(run, ".hydra/overrides.yaml", "- +experiment=showo_dense\n- debug=tiny\n")
    _file(run, ".hydra/config.yaml", "command: train\n")
    _file(run, "metrics.json", '{"test/mmu_acc": 0.5}\n')
    if with_checkpoint is not None:
        _file(run, "checkpoints/last.ckpt", with_checkpoint)
    return run


def _weights_only(d: Path) -> bytes:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {}}, d / "w.ckpt")
    return (d / "w.ckpt").read_bytes()


def _truncated(d: Path) -> bytes:
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "loops": {}, "optimizer_states": []}, d / "t.ckpt")
    return (d / "t.ckpt").read_bytes()[:500]


PLAN_VQA = "format: modlab-routing-plan\nversion: 1\nn_layer: 4\ntasks: {vqa: {layers: [2], capacity: [0.5]}}\n"
PLAN_TWO = (
    "format: modlab-routing-plan\nversion: 1\nn_layer: 4\n"
    "tasks: {t2i: {layers: [2], capacity: [0.5]}, mmu: {layers: [3], capacity: [0.4]}}\n"
)

# (id, args(d) -> tuple, needles)
CASES = [
    # ---- the command line and overrides
    ("unknown-command", lambda d: ("frobnicate",), ("unknown command 'frobnicate'", "train")),
    ("unknown-experiment", lambda d: ("train", "+experiment=nope"), ("experiment/nope", "showo_dense")),
    ("unknown-analysis-job", lambda d: ("analyze", "nope"), ("unknown analysis job 'nope'",)),
    ("key-typo", lambda d: ("train", *FAST, "model.n_layre=3"), ("n_layre",)),
    ("wrong-type", lambda d: ("train", *FAST, "model.n_layer=abc"), ("model.n_layer=abc", "Integer")),
    ("wrong-type-bool", lambda d: ("train", *FAST, "trainer.skip_nonfinite=maybe"), ("skip_nonfinite",)),
    ("unknown-group-option", lambda d: ("train", "model=nope"), ("model/nope",)),
    ("unknown-task-batch", lambda d: ("train", *FAST, "data.batch_size={t2i: 8, vqa: 4}"), ("vqa",)),
    ("unknown-task-weight", lambda d: ("train", *FAST, "objective.loss_weights={vqa: 1.0}"), ("vqa",)),
    ("unknown-precision", lambda d: ("train", *FAST, "trainer.precision=fp8"), ("trainer.precision",)),
    ("unknown-logger", lambda d: ("train", *FAST, "logger.kind=nope"), ("logger.kind 'nope' is unknown",)),
    ("fsdp-on-cpu", lambda d: ("train", *FAST, "trainer=fsdp", "trainer.accelerator=cpu"), ("needs GPUs",)),
    *(
        [("gpu-without-gpu", lambda d: ("train", *FAST, "trainer=ddp"), ("no CUDA GPU",))]
        if not torch.cuda.is_available()
        else []
    ),
    ("eval-without-ckpt", lambda d: ("eval",), ("ckpt_path is required",)),
    (
        "launcher-key-typo",
        lambda d: ("train", "-m", "hydra/launcher=submitit_local", *FAST, "hydra.launcher.timeout_mn=5"),
        ("timeout_mn",),
    ),
    (
        "launcher-wrong-type",
        lambda d: ("train", "-m", "hydra/launcher=submitit_local", *FAST, "hydra.launcher.nodes=abc"),
        ("hydra.launcher.nodes=abc", "Integer"),
    ),
    (
        "unknown-search",
        lambda d: ("train", "+experiment=showo_unimod", "hparams_search=nope"),
        ("hparams_search/nope",),
    ),
    ("unknown-search-direction", lambda d: ("train", *FAST, "search.direction=up"), ("search.direction 'up'",)),
    ("compare-without-dirs", lambda d: ("compare",), ("needs run directories",)),
    # ---- values out of range
    ("negative-lr", lambda d: ("train", *FAST, "objective.lr=-1"), ("objective.lr must be > 0",)),
    ("heads-not-dividing", lambda d: ("train", *FAST, "model.d_model=100", "model.n_head=3"), ("n_head",)),
    (
        "capacity-above-1",
        lambda d: ("train", "+experiment=showo_mod", "routing.capacity=1.5"),
        ("routing.capacity must be in (0, 1]",),
    ),
    (
        "capacity-0",
        lambda d: ("train", "+experiment=showo_mod", "routing.capacity=0"),
        ("routing.capacity must be in (0, 1]",),
    ),
    (
        "layer-out-of-range",
        lambda d: ("train", "+experiment=showo_mod", "routing.layers=[1,4]"),
        ("out of range", "0..3"),
    ),
    (
        "unknown-task-capacity",
        lambda d: ("train", "+experiment=showo_unimod", "routing.task_capacity={vqa: [0.5]}"),
        ("vqa",),
    ),
    (
        "too-many-capacities",
        lambda d: ("train", "+experiment=showo_unimod", "routing.task_capacity.mmu=[0.5,0.3,0.2]"),
        ("3 values for 2 routed layers",),
    ),
    (
        "anneal-steps-0",
        lambda d: ("train", "+experiment=showo_mod", "schedule=linear", "routing.schedule.anneal_steps=0"),
        ("anneal_steps",),
    ),
    (
        "negative-checkpoint-interval",
        lambda d: ("train", *FAST, "callbacks.checkpoint_every_n_steps=-1"),
        ("callbacks.checkpoint_every_n_steps and callbacks.progress_interval_s must be >= 0",),
    ),
    ("negative-flops-budget", lambda d: ("train", *FAST, "search.max_flops_ratio=-1"), ("must be >= 0",)),
    (
        "minimise-budget-without-worst",
        lambda d: (
            "train",
            *FAST,
            "search.metrics=[test/lm_ppl]",
            "search.direction=minimize",
            "search.max_flops_ratio=1",
        ),
        ("search.worst is needed",),
    ),
    # ---- files missing, empty, corrupt, of the wrong kind
    (
        "init-from-missing",
        lambda d: ("train", "+experiment=showo_unimod", "init_from=/no/such.ckpt"),
        ("does not exist",),
    ),
    (
        "plan-missing",
        lambda d: ("train", "+experiment=showo_unimod", "routing.plan=/no/such/plan.yaml"),
        ("plan file not found",),
    ),
    (
        "plan-unknown-task",
        lambda d: ("train", "+experiment=showo_unimod", f"routing.plan={_file(d, 'plan.yaml', PLAN_VQA)}"),
        ("unknown task(s) ['vqa']",),
    ),
    (
        "plan-for-mod-with-two-tasks",
        lambda d: ("train", "+experiment=showo_mod", *TINY, f"routing.plan={_file(d, 'plan2.yaml', PLAN_TWO)}"),
        ("its plan must route one task", "['mmu', 't2i']"),
    ),
    ("plan-for-a-dense-run", lambda d: ("train", *FAST, "routing.plan=/no/such/plan.yaml"), ("needs routers",)),
    ("text-file-empty", lambda d: ("train", *FAST, f"data.lm_files=[{_file(d, 'empty.txt', '')}]"), ("is empty",)),
    ("eval-missing", lambda d: ("eval", "ckpt_path=/no/such/file.ckpt"), ("does not exist",)),
    ("eval-a-directory", lambda d: ("eval", f"ckpt_path={d}"), ("does not exist",)),
    ("eval-empty-file", lambda d: ("eval", f"ckpt_path={_file(d, 'empty.ckpt', b'')}"), ("corrupt",)),
    (
        "eval-corrupt",
        lambda d: ("eval", f"ckpt_path={_file(d, 'corrupt.ckpt', b'this is not a checkpoint')}"),
        ("corrupt",),
    ),
    (
        "eval-truncated",
        lambda d: ("eval", f"ckpt_path={_file(d, 'cut.ckpt', _truncated(d))}"),
        ("truncated",),
    ),
    (
        "generate-foreign",
        lambda d: ("generate", f"ckpt_path={_file(d, 'foreign.ckpt', _weights_only(d))}"),
        ("not a modlab",),
    ),
    (
        "analyze-png",
        lambda d: ("analyze", "importance", f"ckpt_path={_file(d, 'image.png', b'PNG')}"),
        ("corrupt",),
    ),
    ("compare-missing", lambda d: ("compare", str(d / "nowhere")), ("does not exist",)),
    ("compare-empty-dir", lambda d: ("compare", str((d / "e").mkdir() or d / "e")), ("no finished run",)),
    ("compare-a-file", lambda d: ("compare", str(_file(d, "x.txt", "x"))), ("is a file",)),
    (
        "compare-corrupt-metrics",
        lambda d: ("compare", str(_file(d, "r/metrics.json", "{not json").parent)),
        ("not valid JSON",),
    ),
    # ---- incompatible checkpoints
    (
        "init-from-other-model",
        lambda d: ("train", "+experiment=showo_unimod", "debug=fast", f"init_from={save_tiny_unified(d / 'u.ckpt')}"),
        ("different model config",),
    ),
    # ---- resume, and run directories
    ("resume-missing", lambda d: ("train", "resume=/no/such/run"), ("resume '/no/such/run' does not exist",)),
    ("resume-no-checkpoint", lambda d: ("train", f"resume={_run_dir(d)}"), ("has no checkpoints/last.ckpt",)),
    (
        "resume-not-a-run",
        lambda d: ("train", f"resume={_file(d, 'lone/checkpoints/last.ckpt', _truncated(d))}"),
        ("not a modlab run directory",),
    ),
    ("resume-truncated", lambda d: ("train", f"resume={_run_dir(d, _truncated(d))}"), ("truncated",)),
    (
        "resume-weights-only",
        lambda d: ("train", f"resume={_run_dir(d, _weights_only(d))}"),
        ("cannot continue a run", "init_from="),
    ),
    ("resume-a-sweep", lambda d: ("train", "-m", f"resume={_run_dir(d)}"), ("resume each job",)),
    ("run-dir-holds-a-run", lambda d: ("train", *FAST, f"hydra.run.dir={_run_dir(d)}"), ("already holds a run",)),
    (
        "sweep-dir-holds-runs",
        lambda d: ("train", "-m", *FAST, f"hydra.sweep.dir={_run_dir(d).parent}"),
        ("hydra.sweep.dir", "already holds a run"),
    ),
    # ---- outputs that cannot be written
    (
        "output-dir-is-a-file",
        lambda d: ("train", *FAST, f"paths.output_dir={_file(d, 'afile', 'x')}"),
        ("cannot write", "Not a directory"),
    ),
    (
        "output-dir-not-writable",
        lambda d: ("eval", "ckpt_path=x.ckpt", "paths.output_dir=/sys/modlab-test-output"),
        ("cannot write", "/sys/modlab-test-output"),
    ),
]


# ---- optional extras that are not installed (their modules hidden): each error names the pip command
MISSING_EXTRAS = [
    ("logger-tensorboard", ("tensorboard", "tensorboardX"), ("logger=tensorboard",), "modlab[tensorboard]"),
    ("logger-mlflow", ("mlflow",), ("logger=mlflow",), "modlab[mlflow]"),
    ("logger-wandb", ("wandb",), ("logger=wandb",), "modlab[wandb]"),
    (
        "launcher-submitit",
        ("hydra_plugins.hydra_submitit_launcher",),
        ("-m", "hydra/launcher=submitit_local"),
        "modlab[submitit]",
    ),
    ("sweeper-optuna", ("hydra_plugins.hydra_optuna_sweeper",), ("hparams_search=unimod_capacity",), "modlab[optuna]"),
]


@pytest.mark.parametrize("hidden, args, extra", [c[1:] for c in MISSING_EXTRAS], ids=[c[0] for c in MISSING_EXTRAS])
def test_a_missing_optional_extra_is_one_line_naming_its_install(tmp_path: Path, hidden, args, extra):
    out = tmp_path / "out"
    experiment = "+experiment=showo_unimod" if "hparams_search" in args[-1] else "+experiment=showo_dense"
    env = hiding_modules(tmp_path / "site", *hidden)
    proc = run_modlab("train", *args, experiment, *TINY, out_dir=out, env=env)
    assert_one_line_error(proc, f"{args[-1]} needs the ", f"(pip install '{extra}')")
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".json")]


def test_submitit_slurm_without_slurm_is_one_line(tmp_path: Path):
    if shutil.which("srun"):
        pytest.skip("this machine has SLURM: the sweep would be submitted")
    proc = run_modlab("train", "-m", "hydra/launcher=submitit_slurm", *FAST, out_dir=tmp_path / "out")
    assert_one_line_error(proc, "no SLURM", "hydra/launcher=submitit_local")
    assert not (tmp_path / "out").exists()


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("make_args, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_is_written_or_lost(tmp_path: Path, make_args, needles):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    args = make_args(inputs)
    before = _snapshot(inputs)
    proc = run_modlab(*args, out_dir=out)
    assert_one_line_error(proc, *needles)
    assert _snapshot(inputs) == before  # every input file as it was
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".json", ".safetensors", ".png")]
    assert not written, written


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path: Path):
    """A full disk, simulated with a file-size limit (RLIMIT_FSIZE: a write past it fails with EFBIG,
    as on a full disk, instead of killing the process): the checkpoint save fails, no partial
    file is left, and the run ends in one line naming the file."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    import os

    env = {**os.environ, "MODLAB_OUTPUT_DIR": str(tmp_path), "COLUMNS": "120"}
    env.pop("MODLAB_DEBUG", None)
    run = tmp_path / "run"
    proc = subprocess.run(
        [MODLAB, "train", *FAST, f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=limit,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("modlab: error: cannot write") and ".ckpt" in last and "File too large" in last, last
    assert not list((run / "checkpoints").glob("*")), "a partial checkpoint was left"
