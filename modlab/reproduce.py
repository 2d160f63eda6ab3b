"""`make reproduce` (`python -m modlab.reproduce`): the UniMoD paper's comparison on digit scenes.

For each model family (Show-o-like and Emu3-like; a family whose experiments are missing is skipped):

1. train the dense model (`<family>.dense`, e.g. scenes_dense);
2. analysis, when `modlab analyze redundancy` exists: ARank of the dense checkpoint -> a routing
   plan (routed layers and per-task capacities) for UniMoD; skipped otherwise (UniMoD then uses
   conf/routing/unimod.yaml);
3. fine-tune from the dense checkpoint (`init_from=`) at matched training FLOPs: every fine-tune
   gets the FLOPs of `--finetune-steps` dense steps, so a routed model that is cheaper per step
   takes more steps (its FLOPs per step are measured on real training batches before it starts);
   a dense fine-tune with the same budget is the control;
4. every `modlab train` ends by testing the weights at the end of its budget
   (`callbacks.test_checkpoint=last`: Lightning validates only every val_check_interval steps, so
   the best-val/loss checkpoint of a 297-step run is its step-250 one, of a 514-step run its
   step-500 one; the arms would be tested part-way through budgets of different lengths);
5. write results.md and results.csv (training FLOPs per step, the step tested and the training
   FLOPs up to it, MMU accuracy per question type, T2I accuracy per prompt category, digits-FID)
   and pareto.png, and print where they are.

Each run is a real `modlab` command in a subprocess with its run directory under the output
directory; its output goes to <run dir>.log.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from modlab.analysis.stats import paired_difference, spread
from modlab.data.scenes import PROMPT_CATEGORIES, QUESTION_TYPES


@dataclass(frozen=True)
class Family:
    """The experiments of one model family: a dense model and its MoD / UniMoD variants."""

    name: str
    dense: str
    mod: str
    unimod: str
    plan_target: float  # the training-FLOPs ratio the ARank plan is allocated to (UniMoD paper: 0.85 for Show-o)
    plan_fraction: float = 0.5  # the share of layers the plan may route (0.6 needs more than half of 4 layers)


FAMILIES = (
    Family("Show-o-like", dense="scenes_dense", mod="scenes_mod", unimod="scenes_unimod", plan_target=0.85),
    Family(
        "Emu3-like",
        dense="scenes_emu3_dense",
        mod="scenes_emu3_mod",
        unimod="scenes_emu3_unimod",
        plan_target=0.6,
        plan_fraction=0.75,  # with half the layers routed the lowest reachable ratio is ~0.62
    ),
)

# Fine-tuning a trained model: a lower peak learning rate and a short warm-up.
FINETUNE = ["objective.lr=1e-3", "objective.warmup_steps=20"]
# --quick: a tiny model and a few steps of everything (tests/recipes/test_scenes_cli.py)
QUICK = [
    "debug=fast",
    "model.d_model=32",
    "model.n_head=2",
    "data.codebook_size=16",
    "trainer.val_check_interval=2",
    "eval.t2i_per_category=2",
]


@dataclass
class Row:
    family: str
    method: str  # dense | dense (fine-tuned) | MoD | UniMoD | UniMoD (plan ...)
    run_dir: Path
    metrics: dict = field(default_factory=dict)
    note: str = ""
    seed: int | None = None  # the fine-tune's seed (the dense base has one seed of its own)


# ---- running modlab ------------------------------------------------------------------------


def experiment_exists(name: str) -> bool:
    # the front end's config (omegaconf, modlab.conf) only for this benchmark
    import modlab.conf

    return (Path(modlab.conf.__file__).parent / "experiment" / f"{name}.yaml").is_file()


def run_modlab(args: list[str], run_dir: Path) -> None:
    """One `modlab` command with its run directory at `run_dir`, output in `<run_dir>.log`."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_suffix(".log")
    cmd = [sys.executable, "-m", "modlab.cli.main", *args, f"hydra.run.dir={run_dir}"]
    print(f"  $ modlab {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    print(f"    {time.perf_counter() - start:.0f} s, log {log}", flush=True)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"modlab {args[0]} failed (exit {done.returncode}): {' | '.join(tail)}")


# every run is tested at the end of its training (its whole FLOPs budget), not at its best validation
TEST_AT_END = ["callbacks.progress_bar=false", "callbacks.test_checkpoint=last"]


def train(experiment: str, overrides: list[str], run_dir: Path) -> dict:
    run_modlab(["train", f"+experiment={experiment}", *TEST_AT_END, *overrides], run_dir)
    return json.loads((run_dir / "metrics.json").read_text())


def probe_flops_per_step(experiment: str, overrides: list[str], run_dir: Path) -> float:
    """Training FLOPs per step of a config, as metrics.json reports them (routing-aware, on the
    rows really drawn): `modlab train ... dry_run=true` measures a few training batches through
    the initialised model and trains nothing."""
    run_modlab(["train", f"+experiment={experiment}", *overrides, "dry_run=true"], run_dir)
    return json.loads((run_dir / "metrics.json").read_text())["train/flops_per_step"]


# ---- the comparison ------------------------------------------------------------------------


def run_family(
    fam: Family,
    out: Path,
    finetune_steps: int,
    extra: list[str],
    skip_analysis: bool,
    dense_run: Path | None = None,
    seeds: tuple[int, ...] = (42,),
) -> list[Row]:
    """The dense base (one seed), the ARank plan from it, then every fine-tune for every seed."""
    if dense_run is None:
        print(f"\n[{fam.name}] dense: {fam.dense}", flush=True)
        dense = Row(fam.name, "dense", out / fam.name / "dense")
        dense.metrics = train(fam.dense, extra, dense.run_dir)
    else:
        print(f"\n[{fam.name}] dense: the run in {dense_run}", flush=True)
        dense = Row(fam.name, "dense", dense_run, json.loads((dense_run / "metrics.json").read_text()))
    ckpt = dense.run_dir / "checkpoints" / "last.ckpt"

    methods = [
        ("dense (fine-tuned)", "dense_ft", fam.dense, [], "control: same FLOPs budget"),
        ("MoD", "mod", fam.mod, [], "conf/routing/mod.yaml"),
        ("UniMoD", "unimod", fam.unimod, [], "the experiment's task capacities"),
    ]
    if skip_analysis:
        print(f"[{fam.name}] analysis: skipped (--skip-analysis)")
    else:
        print(
            f"[{fam.name}] analysis: ARank redundancy -> routing plan at {fam.plan_target:g} of dense FLOPs", flush=True
        )
        analysis_dir = out / fam.name / "analysis"
        plan_settings = [
            f"analysis.plan.target_flops_ratio={fam.plan_target}",
            f"analysis.plan.fraction={fam.plan_fraction}",
        ]
        try:
            run_modlab(["analyze", "redundancy", f"ckpt_path={ckpt}", *plan_settings], analysis_dir)
            plan = analysis_dir / "routing_plan.yaml"
            if plan.is_file():
                method = f"UniMoD (ARank plan @ {fam.plan_target:g})"
                methods.append(
                    (method, "unimod_plan", fam.unimod, [f"routing.plan={plan}"], f"routing plan ({plan.name})")
                )
            else:
                print("    the analysis wrote no routing_plan.yaml: no plan-based UniMoD row")
        except RuntimeError as e:
            print(f"    analysis failed, no plan-based UniMoD row: {e}")

    budget = finetune_steps * dense.metrics["train/flops_per_step"]
    rows = [dense]
    for method, dirname, experiment, overrides, note in methods:
        common = [*extra, f"init_from={ckpt}", *FINETUNE, *overrides]
        per_step = probe_flops_per_step(experiment, common, out / fam.name / f"{dirname}_flops_probe")
        steps = max(1, round(budget / per_step))
        print(f"[{fam.name}] {method}: {experiment}, {per_step / 1e9:.2f} GFLOPs/step -> {steps} steps", flush=True)
        for seed in seeds:
            run_dir = out / fam.name / dirname / f"seed{seed}" if len(seeds) > 1 else out / fam.name / dirname
            row = Row(fam.name, method, run_dir, note=note, seed=seed)
            schedule = [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(1, min(steps, 250))}"]
            row.metrics = train(experiment, [*common, *schedule, f"seed={seed}"], row.run_dir)
            rows.append(row)
    return rows


# ---- the table and the plot ----------------------------------------------------------------

COLUMNS = (
    [
        ("steps", "train/steps", "{:.0f}"),
        ("tested step", "test/checkpoint_step", "{:.0f}"),
        ("GFLOPs/step", "train/flops_per_step", "{:.2f}"),
        ("vs dense", "ratio", "{:.2f}"),
        ("TFLOPs to tested", "tested_flops", "{:.3g}"),
    ]
    + [(f"MMU {t}", f"test/mmu_acc/{t}", "{:.3f}") for t in QUESTION_TYPES]
    + [("MMU all", "test/mmu_acc", "{:.3f}")]
    + [(f"T2I {c}", f"test/t2i_acc/{c}", "{:.3f}") for c in PROMPT_CATEGORIES]
    + [("T2I all", "test/t2i_acc", "{:.3f}"), ("FID ↓", "test/t2i_fid", "{:.2f}")]
)


def _value(row: Row, key: str, dense_flops: float):
    m = row.metrics
    if key == "train/flops_per_step":
        return m.get(key, math.nan) / 1e9
    if key == "ratio":
        return m.get("train/flops_per_step", math.nan) / dense_flops
    if key == "tested_flops":  # training FLOPs up to the tested weights (the run's mean per step)
        return m.get("test/checkpoint_step", math.nan) * m.get("train/flops_per_step", math.nan) / 1e12
    v = m.get(key)
    return math.nan if v is None else v


def _cell(values: list[float], fmt: str) -> str:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    st = spread(values)
    return f"{fmt.format(st['mean'])} ± {fmt.format(st['std'])}"


DIFFERENCES = (
    ("MMU all", "test/mmu_acc", "{:+.3f}"),
    ("T2I all", "test/t2i_acc", "{:+.3f}"),
    ("FID", "test/t2i_fid", "{:+.1f}"),
)


def difference_lines(rows: list[Row]) -> list[str]:
    """Each fine-tune minus the dense control, paired by seed: mean, 95 % interval, and whether it
    exceeds the seed spread (the interval excludes 0)."""
    lines = [
        "",
        "Differences to the dense control (same FLOPs budget), paired by seed: mean ± 95 % interval;",
        "**bold** where the interval excludes 0 (the difference exceeds the seed spread).",
        "",
        "| model | method | " + " | ".join(f"Δ {name}" for name, _, _ in DIFFERENCES) + " |",
        "|---|---|" + "---|" * len(DIFFERENCES),
    ]
    for fam in dict.fromkeys(r.family for r in rows):
        tuned = [r for r in rows if r.family == fam and r.seed is not None]
        for method in dict.fromkeys(r.method for r in tuned if r.method != "dense (fine-tuned)"):
            cells = []
            for _, key, fmt in DIFFERENCES:
                data = [{"arm": r.method, "seed": r.seed, "v": r.metrics.get(key)} for r in tuned]
                data = [d for d in data if d["arm"] in (method, "dense (fine-tuned)") and d["v"] is not None]
                diff = paired_difference(data, "arm", method, "dense (fine-tuned)", (), "v")
                if not diff:
                    cells.append("–")
                    continue
                d = diff[0]
                text = fmt.format(d["mean"]) + ("" if d["ci95"] is None else f" ± {d['ci95']:.3f}")
                cells.append(f"**{text}**" if d["exceeds_spread"] else text)
            lines.append(f"| {fam} | {method} | " + " | ".join(cells) + " |")
    return lines


def write_table(
    rows: list[Row], skipped: list[str], out: Path, finetune_steps: int, wall_s: float
) -> tuple[Path, Path]:
    dense_flops = {r.family: r.metrics.get("train/flops_per_step", math.nan) for r in rows if r.method == "dense"}
    header = ["model", "method", "seed", *[c[0] for c in COLUMNS], "routing"]
    per_run = [
        [r.family, r.method, r.seed, *[_value(r, key, dense_flops[r.family]) for _, key, _ in COLUMNS], r.note]
        for r in rows
    ]
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(per_run)
    seeds = sorted({r.seed for r in rows if r.seed is not None})
    lines = [
        "# Digit scenes: dense vs MoD vs UniMoD (UniMoD paper, Table-style)",
        "",
        f"Fine-tunes start from the dense checkpoint with the training FLOPs of {finetune_steps} dense steps each"
        + (
            f", each with seeds {', '.join(map(str, seeds))} (cells: mean ± std over seeds)." if len(seeds) > 1 else "."
        ),
        "GFLOPs/step: analytic training FLOPs (forward + backward) of one step, routing-aware (the run's mean).",
        "Every run is tested with its weights at the end of its training: tested step = steps, and",
        "TFLOPs to tested = tested step x GFLOPs/step (the fine-tunes: the same budget each).",
        "MMU: exact-match answers to 100 test questions per type; T2I: generated scenes that show the prompt",
        "(blank detector + reference classifier per cell); FID: digits-FID of generated cells vs real test digits.",
        "",
        "| " + " | ".join(h for h in header if h != "seed") + " |",
        "|" + "|".join("---" for h in header if h != "seed") + "|",
    ]
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.family, r.method), []).append(r)
    for (fam, method), members in groups.items():
        cells = [_cell([_value(r, key, dense_flops[fam]) for r in members], fmt) for _, key, fmt in COLUMNS]
        lines.append(f"| {fam} | {method} | " + " | ".join(cells) + f" | {members[0].note} |")
    if len(seeds) > 1:
        lines += difference_lines(rows)
    lines.append("")
    for r in (r for r in rows if r.method == "dense"):
        m = r.metrics
        lines.append(
            f"Scorer ceilings ({r.family}, real test scenes after the image tokenizer): "
            f"T2I {m.get('test/t2i_acc_tokenized', math.nan):.3f}, "
            f"FID {m.get('test/t2i_fid_tokenized', math.nan):.2f}; "
            f"reference classifier on real test digits {m.get('test/ref_classifier_acc', math.nan):.3f}."
        )
    for s in skipped:
        lines.append(f"Not run: {s}.")
    lines.append(f"Wall time of the whole reproduction: {wall_s / 60:.1f} min.")
    md_path = out / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, csv_path


def write_pareto(rows: list[Row], out: Path) -> Path:
    """Training cost vs MMU / T2I accuracy, one point per (family, method): the mean over seeds
    with a ± std error bar."""
    # matplotlib only when a figure is drawn
    from modlab.analysis.plots import plot_pareto

    x = "training GFLOPs per step"
    keys = {x: "train/flops_per_step", "MMU accuracy": "test/mmu_acc", "T2I accuracy": "test/t2i_acc"}
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.family, r.method), []).append(r)
    points = []
    for (fam, method), members in groups.items():
        point = {"label": f"{fam} {method}", "family": fam}
        for name, key in keys.items():
            values = [m.metrics[key] for m in members if m.metrics.get(key) is not None]
            st = spread(values) if values else {"mean": math.nan, "std": 0.0}
            scale = 1e9 if name == x else 1.0
            point[name], point[f"{name}_std"] = st["mean"] / scale, st["std"] / scale
        points.append(point)
    return plot_pareto(points, x, {"MMU accuracy": True, "T2I accuracy": True}, out / "pareto.png", group="family")


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m modlab.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output directory (default outputs/reproduce/<time>)")
    p.add_argument(
        "--finetune-steps", type=int, default=300, help="fine-tuning budget in dense-step FLOPs (default 300)"
    )
    p.add_argument("--skip-analysis", action="store_true", help="do not run `modlab analyze redundancy`")
    p.add_argument(
        "--dense-run",
        type=Path,
        default=None,
        help="reuse this Show-o-like dense run directory (metrics.json, checkpoints/last.ckpt) instead of training one",
    )
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps of everything (for tests)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="fine-tune every method with this many seeds (42, 43, ...) from one dense base",
    )
    p.add_argument(
        "--family",
        choices=[f.name for f in FAMILIES],
        action="append",
        default=None,
        help="run only this family (repeatable; default: all), e.g. to run the families in parallel processes",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. model.n_layer=6")
    a = p.parse_args(argv)
    if a.seeds < 1:
        raise RuntimeError(f"--seeds must be >= 1, got {a.seeds}")
    if a.dense_run and not all((a.dense_run / f).is_file() for f in ("metrics.json", "checkpoints/last.ckpt")):
        raise RuntimeError(
            f"--dense-run {a.dense_run} holds no metrics.json and checkpoints/last.ckpt of a finished run"
        )
    out = a.out or Path(os.environ.get("MODLAB_OUTPUT_DIR", "outputs")) / "reproduce" / time.strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = [*(QUICK if a.quick else []), *a.overrides]
    start = time.perf_counter()
    rows, skipped = [], []
    for fam in FAMILIES:
        if a.family and fam.name not in a.family:
            continue
        missing = [e for e in (fam.dense, fam.mod, fam.unimod) if not experiment_exists(e)]
        if missing:
            skipped.append(f"{fam.name} (no experiment {', '.join(missing)})")
            print(f"[{fam.name}] skipped: no experiment {', '.join(missing)}")
            continue
        reuse = a.dense_run.resolve() if a.dense_run and fam is FAMILIES[0] else None
        seeds = tuple(42 + i for i in range(a.seeds))
        rows += run_family(fam, out, a.finetune_steps, extra, a.skip_analysis, reuse, seeds)
    md, csv_path = write_table(rows, skipped, out, a.finetune_steps, time.perf_counter() - start)
    plot = write_pareto(rows, out)
    print("\n" + md.read_text())
    print(f"table: {md}\n       {csv_path}\nplot:  {plot}")
    return md


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        sys.stderr.write(f"modlab reproduce: error: {e}\n")
        raise SystemExit(1) from None
