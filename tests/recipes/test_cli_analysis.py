"""`modlab analyze <job>` and `modlab compare` through the real CLI: every job writes JSON, CSV
and PNG; the plan `redundancy` writes trains; bad input is one line with exit code 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, assert_one_line_error, only_run_dir, run_modlab, save_tiny_hf, save_tiny_unified

SMALL_BUDGET = {
    "attention": ["calibration.n_per_task=6"],
    "importance": [
        "calibration.n_per_task=6",
        "analysis.importance.mmu_prompts=6",
        "analysis.importance.t2i_per_digit=1",
        "analysis.importance.maskgit_steps=2",
        "analysis.importance.classifier_epochs=1",
    ],
    "interactions": [
        "calibration.n_per_task=4",
        "analysis.interactions.steps=2",
        "analysis.interactions.batch_size=4",
        "analysis.interactions.seeds=[0,1]",
        "analysis.interactions.router_max_steps=4",
        "analysis.interactions.router_eval_every=2",
    ],
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_unified(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def assert_outputs(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    csvs, pngs = list(run.glob("*.csv")), list(run.glob("*.png"))
    assert csvs and pngs, sorted(p.name for p in run.iterdir())
    assert all(p.read_text().count("\n") >= 2 for p in csvs)  # a header and rows
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert set(results["files"]) >= {p.name for p in csvs + pngs}
    return results


def run_analysis(*args: str, out_dir: Path) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """`modlab analyze ARGS`, which must succeed: its output, run directory and checked results.json."""
    proc = run_modlab("analyze", *args, out_dir=out_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(out_dir)
    return proc, run, assert_outputs(run)


def test_redundancy_writes_a_plan_that_training_uses(tiny_ckpt: Path, tmp_path: Path):
    proc, run, results = run_analysis(
        "redundancy", f"ckpt_path={tiny_ckpt}", "calibration.n_per_task=8", out_dir=tmp_path / "a"
    )
    assert run.parts[-3:-1] == ("redundancy", "checkpoint")
    assert len(results["results"]["arank"]) == 3 * 4 and results["calibration"]["rows"] == {"t2i": 8, "mmu": 8, "lm": 8}
    plan_path = run / "routing_plan.yaml"
    assert f"routing.plan={plan_path}" in proc.stdout.replace("\n", "")

    from modlab.routing.plan_file import load_plan

    plan = load_plan(plan_path)
    assert plan.n_layer == 4 and set(plan.tasks) == {"t2i", "mmu"}
    assert all(len(p.layers) == 2 for p in plan.tasks.values())
    proc = run_modlab(
        "train",
        "+experiment=showo_unimod",
        *TINY,
        f"routing.plan={plan_path}",
        "callbacks.checkpoint=false",
        out_dir=tmp_path / "t",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = only_run_dir(tmp_path / "t")
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["train/flops_ratio"] < 1.0  # the plan's routed layers really ran fewer tokens
    hparams = (trained / "hparams.yaml").read_text()
    assert "task_layers" in hparams

    # compare the routed run with a copy of itself marked as another experiment
    proc = run_modlab("compare", str(trained), out_dir=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr[-3000:]
    compared = only_run_dir(tmp_path / "c")
    table = (compared / "compare.csv").read_text().splitlines()
    assert len(table) == 2 and "train/flops_per_step" in table[0] and "test/mmu_acc" in table[0]
    assert (compared / "pareto.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("job", ["attention", "importance", "interactions"])
def test_every_job_writes_json_csv_and_png(job: str, tiny_ckpt: Path, tmp_path: Path):
    _, _, results = run_analysis(job, f"ckpt_path={tiny_ckpt}", *SMALL_BUDGET[job], out_dir=tmp_path)
    assert results["job"] == job and results["results"]
    if job == "importance":
        metrics = {r["metric"] for r in results["results"]["drop_layer"]}
        assert {"loss", "mmu_acc", "t2i_acc", "lm_ppl"} <= metrics
    if job == "interactions":
        runs = {r["run"] for r in results["results"]["joint_training"]}
        assert runs == {"single:t2i", "single:mmu", "joint"}
        assert {(r["router"], r["seed"]) for r in results["results"]["router_runs"]} == {
            (a, s) for a in ("shared", "task") for s in (0, 1)
        }
        steps = {r["step"] for r in results["results"]["router_curve"]}
        assert 0 in steps and max(steps) <= 4  # fresh routers, then every 2 router-only steps
        gap = results["results"]["router_gap"]
        assert gap and all(r["n"] == 2 and r["ci95"] is not None for r in gap)


def test_compare_of_a_sweep_directory(tmp_path: Path):
    sweep = tmp_path / "multirun_x"
    for i, (cap, flops, acc) in enumerate([(0.125, 1.0e9, 0.80), (0.5, 2.0e9, 0.90), (1.0, 3.0e9, 0.85)]):
        run = sweep / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text("experiment_name: showo_mod\n")
        (run / ".hydra" / "overrides.yaml").write_text(f"- +experiment=showo_mod\n- routing.capacity={cap}\n")
        (run / "metrics.json").write_text(
            json.dumps({"train/flops_per_step": flops, "test/mmu_acc": acc, "test/lm_ppl": 6.0 - i})
        )
    proc = run_modlab("compare", str(sweep), out_dir=tmp_path / "o")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = only_run_dir(tmp_path / "o")
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == [f"showo_mod routing.capacity={c}" for c in (0.125, 0.5, 1.0)]
    assert results["metrics"] == ["test/lm_ppl", "test/mmu_acc"]
    assert (out / "pareto.png").is_file() and "showo_mod routing.capacity=0.5" in proc.stdout


def test_analyze_without_a_job_lists_the_jobs_without_torch():
    code = (
        "import sys; from modlab.cli.main import main; main(['analyze']); "
        "bad = [m for m in ('torch', 'lightning', 'hydra') if m in sys.modules]; assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    for job in ("attention", "importance", "redundancy", "interactions"):
        assert job in out.stdout


def test_analyze_bad_input_is_one_line_and_exit_2(tiny_ckpt: Path, tmp_path: Path):
    assert_one_line_error(
        run_modlab("analyze", "nope", f"ckpt_path={tiny_ckpt}", out_dir=tmp_path), "unknown analysis job 'nope'"
    )
    assert_one_line_error(
        run_modlab("analyze", "redundancy", f"ckpt_path={tmp_path}/missing.ckpt", out_dir=tmp_path), "does not exist"
    )
    assert_one_line_error(
        run_modlab("analyze", "attention", f"ckpt_path={tiny_ckpt}", "calibration.n_per_task=0", out_dir=tmp_path),
        "calibration.n_per_task must be >= 1",
    )
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert_one_line_error(run_modlab("analyze", "importance", f"ckpt_path={foreign}", out_dir=tmp_path), "not a modlab")


# ---- causal LMs, Hugging Face LMs and Emu3-like checkpoints --------------------------------------


def test_lm_importance_and_redundancy(lm_pretrained: Path, tmp_path: Path):
    proc, run, results = run_analysis(
        "importance",
        f"ckpt_path={lm_pretrained}",
        "calibration.n_per_task=6",
        "precision=32-true",
        out_dir=tmp_path / "i",
    )
    assert run.parts[-3:-1] == ("importance", "lm_pretrain")
    assert (
        results["arch"] == "lm"
        and results["calibration"]["tasks"] == ["lm"]
        and results["calibration"]["rows"] == {"lm": 6}
    )
    llm = results["results"]["llm_drop"]
    assert {(r["task"], r["layer"], r["sublayer"]) for r in llm} == {
        ("lm", i, s) for i in range(4) for s in ("attn", "mlp", "block")
    }
    drop = {(r["dropped"], r["metric"]): r["value"] for r in results["results"]["drop_layer"]}
    assert set(drop) == {(d, m) for d in range(-1, 4) for m in ("loss", "lm_ppl")}
    assert all(drop[(d, "lm_ppl")] == pytest.approx(math.exp(drop[(d, "loss")])) for d in range(-1, 4))
    assert "lm_ppl" in proc.stdout

    # the full model's loss is the LM's next-token loss on the seeded held-out windows
    import torch.nn.functional as F

    from modlab.analysis.calibration import calibration_batches
    from modlab.data.config import DataConfig
    from modlab.data.tokens import IGNORE_INDEX
    from modlab.training.checkpoint import load_pretrained_lm

    lm, _, hp = load_pretrained_lm(str(lm_pretrained))
    (batch,) = calibration_batches(DataConfig(**hp["data"]), None, ["lm"], 6, seed=0, split="val")["lm"]
    with torch.no_grad():
        logits = lm(batch["ids"], valid=batch["valid"])
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
    assert drop[(-1, "loss")] == pytest.approx(float(loss), rel=1e-5)

    proc, run, results = run_analysis(
        "redundancy", f"ckpt_path={lm_pretrained}", "calibration.n_per_task=6", out_dir=tmp_path / "r"
    )
    arank = results["results"]["arank"]
    assert [r["layer"] for r in arank] == [0, 1, 2, 3]
    assert all(1 <= r["arank"] <= 16 and r["seq_len"] == hp["data"]["lm_length"] for r in arank)  # head_dim 16
    # no routing plan for modlab's causal LM (it has no token routing): said in the output and in results.json
    said = "no routing plan for modlab's causal LM"
    assert results["routing_plan"] is None and said in results["routing_plan_skipped"]
    assert not (run / "routing_plan.yaml").exists() and said in proc.stdout


def test_importance_of_a_hugging_face_lm(tmp_path: Path):
    hf = save_tiny_hf(tmp_path / "llama", "llama")
    _, run, results = run_analysis(
        "importance", "model=hf_causal_lm", f"model.path={hf}", "calibration.n_per_task=4", out_dir=tmp_path / "o"
    )
    assert run.parts[-3:-1] == ("importance", "hf_llama")
    assert results["arch"] == "hf" and results["model_path"] == str(hf) and results["ckpt_path"] is None
    assert len(results["results"]["llm_drop"]) == 4 * 3 and all(
        r["importance"] > 0 for r in results["results"]["llm_drop"]
    )
    assert {r["metric"] for r in results["results"]["drop_layer"]} == {"loss", "lm_ppl"}


def test_redundancy_of_an_emu3_checkpoint(tmp_path: Path):
    ckpt = save_tiny_unified(tmp_path / "emu3.ckpt", "emu3")
    _, run, results = run_analysis(
        "redundancy",
        f"ckpt_path={ckpt}",
        "calibration.n_per_task=4",
        "analysis.plan.importance=true",
        out_dir=tmp_path / "o",
    )
    assert results["arch"] == "emu3" and len(results["results"]["arank"]) == 3 * 4
    assert set(results["block_importance"]) == {"t2i", "mmu", "lm"}  # LLM-Drop on the Emu3-like blocks

    from modlab.routing.plan_file import load_plan

    plan = load_plan(run / "routing_plan.yaml")
    assert plan.n_layer == 4 and set(plan.tasks) == {"t2i", "mmu"}


def test_lm_bad_input_is_one_line_and_exit_2(lm_pretrained: Path, tmp_path: Path):
    for job, archs in (("attention", "showo, emu3"), ("interactions", "showo")):
        assert_one_line_error(
            run_modlab("analyze", job, f"ckpt_path={lm_pretrained}", out_dir=tmp_path),
            f"analyze {job} cannot analyse a 'lm' model",
            f"it analyses: {archs}",
        )
    assert_one_line_error(
        run_modlab("analyze", "importance", f"ckpt_path={lm_pretrained}", "calibration.n_per_task=0", out_dir=tmp_path),
        "calibration.n_per_task must be >= 1",
    )
    assert not list(tmp_path.rglob("results.json"))


def test_lm_refusals(lm_pretrained: Path, tmp_path: Path):
    """The other ways an LM analysis is refused (in-process: the CLI turns each into one line)."""
    from modlab.analysis.config import CalibrationConfig
    from modlab.cli.schema import AnalyzeConfig
    from modlab.errors import CheckpointError, ConfigError
    from modlab.families import get_family
    from modlab.models.config import ModelConfig

    lm_family = get_family("lm").family()

    with pytest.raises(ConfigError, match="one of them"):
        AnalyzeConfig()
    with pytest.raises(ConfigError, match="one of them"):
        AnalyzeConfig(ckpt_path=str(lm_pretrained), model=ModelConfig(arch="hf", path="dir"))
    with pytest.raises(ConfigError, match="from its checkpoint"):
        lm_family.load_pretrained(ModelConfig(arch="lm"))
    loaded = lm_family.load_for_analysis(str(lm_pretrained))
    with pytest.raises(ConfigError, match="has no 'lm'"):
        lm_family.analysis_target(loaded, CalibrationConfig(tasks=["t2i", "mmu"]), seed=0)
    target = lm_family.analysis_target(loaded, CalibrationConfig(tasks=["t2i", "mmu", "lm"], n_per_task=2), seed=0)
    assert list(target.batches) == ["lm"]
    with pytest.raises(CheckpointError, match="router file"):
        lm_family.load_for_analysis(str(tmp_path / "routers.safetensors"))
    tuned = torch.load(lm_pretrained, weights_only=True)
    tuned["hyper_parameters"]["mindskip"] = {"enabled": True}
    torch.save(tuned, tmp_path / "tuned.ckpt")
    with pytest.raises(CheckpointError, match="router-tuned"):
        lm_family.load_for_analysis(str(tmp_path / "tuned.ckpt"))


def test_compare_argv_quotes_run_directories_for_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from modlab.cli.main import compare_argv

    argv = compare_argv(["out/a,b", "it's/x=", "-m", "paths.output_dir=o"])
    assert argv[1:] == ["it's/x=", "-m", "paths.output_dir=o"]  # '=' makes it an override
    argv = compare_argv(["out/a,b", "it's/run 1", "paths.output_dir=o"])
    parsed = OverridesParser.create().parse_overrides([argv[0]])[0]
    assert parsed.key_or_group == "runs" and parsed.value() == ["out/a,b", "it's/run 1"]
