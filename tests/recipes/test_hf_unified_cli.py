"""The real `modlab` command on a tiny random Hugging Face Emu3 (Emu3ForConditionalGeneration with
its processor and a tiny VQ-VAE, built from config objects; nothing is downloaded): analyze
redundancy -> routing plan -> UniMoD fine-tune with it -> eval (MMU accuracy, T2I score) ->
generate; the user's image folder tokenized once; every bad input as one line with exit code 2.

These check the plumbing, the routing and the FLOPs accounting on random weights: a random VQ
tokenizer loses the digits (test/ref_classifier_acc_tokenized is near chance), so accuracies here
say nothing about a real checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from helpers import (
    ROUTER_STATE_KEYS,
    assert_one_line_error,
    only_run_dir,
    run_modlab,
    save_tiny_hf,
    save_tiny_hf_showo,
    save_tiny_hf_unified,
)

pytest.importorskip("transformers")

FAST = ("debug=fast", "callbacks.progress_bar=false")


@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory):
    return save_tiny_hf_unified(tmp_path_factory.mktemp("hf") / "emu3")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One image-token cache for the module's runs (the digits are tokenized once)."""
    return f"data.image_cache={tmp_path_factory.mktemp('cache')}"


def train(out, *args):
    proc = run_modlab("train", "+experiment=hf_emu3_unimod", *FAST, *args, out_dir=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return only_run_dir(out / "train")


def test_plan_fine_tune_eval_generate(emu3_dir, cache, tmp_path):
    # the base model, analysed per task: ARank -> a UniMoD plan at 90 % of the training FLOPs
    proc = run_modlab(
        "analyze",
        "redundancy",
        "model=hf_emu3",
        f"model.path={emu3_dir}",
        "calibration.n_per_task=8",
        "analysis.plan.target_flops_ratio=0.9",
        out_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    analysis = only_run_dir(tmp_path / "analyze")
    results = json.loads((analysis / "results.json").read_text())
    assert {r["task"] for r in results["results"]["arank"]} == {"t2i", "mmu", "lm"}
    plan_path = analysis / "routing_plan.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    predicted = plan["source"]["predicted_flops_ratio"]
    assert predicted == pytest.approx(0.9, abs=0.02)
    assert all(0 not in t["layers"] for t in plan["tasks"].values())  # layer 0 sizes the decode masks

    # fine-tune with the plan (no anneal, so every step routes at the planned capacities)
    run = train(
        tmp_path,
        f"model.path={emu3_dir}",
        f"routing.plan={plan_path}",
        "routing.schedule.kind=constant",
        "routing.schedule.anneal_steps=0",
        cache,
    )
    m = json.loads((run / "metrics.json").read_text())
    # the measured ratio of the training steps equals the plan's prediction (rows differ in length)
    assert m["train/flops_ratio"] == pytest.approx(predicted, abs=0.01)
    assert {"test/mmu_acc", "test/t2i_acc", "test/lm_ppl", "test/ref_classifier_acc_tokenized"} <= set(m)
    kept = [k for k in m if k.startswith("test/kept/")]
    assert kept and all(0.0 <= m[k] <= 1.0 for k in kept)
    assert ROUTER_STATE_KEYS <= set(m)  # the routers' logit scale, weight gradient, decision recall
    ckpt = run / "checkpoints" / "last.ckpt"

    proc = run_modlab("eval", f"ckpt_path={ckpt}", "debug=fast", out_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    e = json.loads((only_run_dir(tmp_path / "eval") / "metrics.json").read_text())
    assert 0.0 <= e["test/mmu_acc"] <= 1.0 and 0.0 <= e["test/t2i_acc"] <= 1.0

    proc = run_modlab(
        "generate", f"ckpt_path={ckpt}", "samples_per_prompt=2", "mmu_images=3", "eval.guidance=1.5", out_dir=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gen = only_run_dir(tmp_path / "generate")
    assert (gen / "t2i_samples.png").stat().st_size > 0
    assert len(json.loads((gen / "mmu_answers.json").read_text())) == 3


def write_folder(folder, n=20, questions=True, broken=None):
    """`n` PNG images with captions.jsonl (and questions / answers)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        row = {"file": f"img{i}.png", "caption": f"picture number {i}"}
        if questions:
            row.update(question="what is shown?", answer=f"number {i}")
        lines.append(json.dumps(row))
    if broken == "unreadable":
        (folder / "img3.png").write_bytes(b"not a png")
    if broken == "missing":
        lines.append(json.dumps({"file": "gone.png", "caption": "nothing"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_an_image_folder_is_tokenized_once(emu3_dir, cache, tmp_path):
    folder = write_folder(tmp_path / "images")
    image_cache = tmp_path / "image_cache"
    args = (f"model.path={emu3_dir}", f"data.image_folder={folder}", f"data.image_cache={image_cache}")
    first = train(tmp_path / "a", *args)
    second = train(tmp_path / "b", *args)
    assert "tokenized 20 images" in (first / "train.log").read_text()
    assert "read 20 images from cache" in (second / "train.log").read_text()
    assert len(list(image_cache.glob("*/codes.npy"))) == 1


@pytest.mark.parametrize(
    "case",
    ["another_family", "no_processor", "unreadable_image", "missing_image", "task_without_rows"],
)
def test_bad_input_is_one_line(case, emu3_dir, tmp_path):
    args = [f"model.path={emu3_dir}"]
    if case == "another_family":
        args = [f"model.path={save_tiny_hf(tmp_path / 'llama')}"]
        needles = ("'llama' model",)
    elif case == "no_processor":
        copy = tmp_path / "no_processor"
        shutil.copytree(emu3_dir, copy)
        (copy / "processor_config.json").unlink()
        args, needles = [f"model.path={copy}"], ("no processor",)
    elif case == "unreadable_image":
        args.append(f"data.image_folder={write_folder(tmp_path / 'f', 4, broken='unreadable')}")
        needles = ("img3.png",)
    elif case == "missing_image":
        args.append(f"data.image_folder={write_folder(tmp_path / 'f', 4, broken='missing')}")
        needles = ("gone.png",)
    else:  # UniMoD routes MMU, but the folder's captions have no questions: MMU's routers would never learn
        args.append(f"data.image_folder={write_folder(tmp_path / 'f', 4, questions=False)}")
        needles = ("mmu",)
    proc = run_modlab(
        "train", "+experiment=hf_emu3_unimod", *FAST, *args, f"data.image_cache={tmp_path}/c", out_dir=tmp_path
    )
    assert_one_line_error(proc, *needles)


@pytest.mark.parametrize(
    "family", ["emu3", *(pytest.param(f, marks=pytest.mark.slow) for f in ("chameleon", "janus", "showo"))]
)
def test_router_tuning_trains_the_mindskip_routers_alone(family, emu3_dir, cache, tmp_path):
    if family == "emu3":
        model = [f"model.path={emu3_dir}"]
    else:  # the same experiment on another family's language model
        path = tmp_path / family
        built = save_tiny_hf_showo(path) if family == "showo" else save_tiny_hf_unified(path, family)
        model = [f"model=hf_{family}", f"model.path={built}"]
    proc = run_modlab("train", "+experiment=hf_emu3_router_tuning", *FAST, *model, cache, out_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "train")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= m["test/mindskip_capacity"] <= 1.0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    import torch

    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert set(state) == {"skip.routers.1.proj.weight", "skip.routers.2.proj.weight"}  # the routers alone
    assert any(float(v.abs().sum()) > 0 for v in state.values())  # they moved from their zero init
    run = run_modlab("eval", f"ckpt_path={ckpt}", "debug=fast", out_dir=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "test/mindskip_capacity" in json.loads((only_run_dir(tmp_path / "eval") / "metrics.json").read_text())
