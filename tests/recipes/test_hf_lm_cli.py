"""The real `modlab` command on a tiny random Hugging Face Llama saved to a directory (nothing is
downloaded): Mixture-of-Depths fine-tuning -> eval (perplexity under causal routing, compact-cache
decoding, a local lm-eval task) -> analyze attention | redundancy | importance -> Router-Tuning and
routers-only MoD from an Alpaca-format JSONL file through the model's chat template; and every bad
input as one line with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    ROUTER_STATE_KEYS,
    TINY,
    assert_one_line_error,
    only_run_dir,
    run_modlab,
    save_tiny_hf,
    save_tiny_tokenizer,
    write_alpaca,
    write_mc_task,
)

pytest.importorskip("transformers")

SPEED = ("eval.speed_prompts=2", "eval.speed_context=32", "eval.speed_new_tokens=4", "eval.speed_repeats=1")


def offline_env(tmp_path) -> dict:
    return {"HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_hf(tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def mod_run(hf_dir, tmp_path_factory):
    """`modlab train +experiment=hf_mod` on the tiny Llama: its run directory."""
    out = tmp_path_factory.mktemp("mod")
    proc = run_modlab("train", "+experiment=hf_mod", f"model.path={hf_dir}", *TINY, out_dir=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return only_run_dir(out)


def test_mod_fine_tune_routes_tokens_and_reports_training_flops(mod_run):
    m = json.loads((mod_run / "metrics.json").read_text())
    assert m["params_trained"] == m["params"] and m["dtype"] == "float32"  # objective.trainable=auto: all
    # capacity 0.125 on layers 1 and 3, annealed from dense over 100 steps: 4 steps cut a little
    assert m["train/flops_per_step"] < m["train/flops_per_step_dense"]
    assert m["train/flops_ratio"] == pytest.approx(m["train/flops_per_step"] / m["train/flops_per_step_dense"])
    assert 0 <= m["test/capacity"] <= 1 and 0 < m["test/flops_ratio"] <= 1
    assert {"test/ppl", "test/ppl_topk", "test/ppl_dense", "val/router_agreement"} <= set(m)
    assert ROUTER_STATE_KEYS <= set(m)  # the routers' logit scale, weight gradient, decision recall
    ckpt = torch.load(mod_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "lm.hf.model.layers.1.router.proj.weight" in ckpt["state_dict"]
    assert "lm.hf.model.layers.1.block.self_attn.q_proj.weight" in ckpt["state_dict"]  # the routed layer's weights
    assert ckpt["hyper_parameters"]["routing"]["kind"] == "mod"


def test_eval_of_the_mod_checkpoint_causal_perplexity_decoding_and_a_local_harness_task(mod_run, tmp_path):
    trained = json.loads((mod_run / "metrics.json").read_text())
    best = next((mod_run / "checkpoints").glob("best-step*.ckpt"))
    args = ["eval", f"ckpt_path={best}", "debug=fast", *SPEED]
    harness = importable("lm_eval")
    if harness:
        args += ["harness.tasks=[tiny_mc]", f"harness.include_path={write_mc_task(tmp_path / 'tasks')}"]
    proc = run_modlab(*args, out_dir=tmp_path / "e", env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    e = json.loads((only_run_dir(tmp_path / "e") / "metrics.json").read_text())
    # the checkpoint reloads to the model that was tested: the same causal perplexity
    assert e["test/ppl"] == pytest.approx(trained["test/ppl"], rel=1e-4)
    assert e["test/capacity"] == pytest.approx(trained["test/capacity"], rel=1e-4)
    # batch-1 greedy decoding with the compact cache keeps no K/V where a token skipped a layer
    assert e["speed/routed_kv_entries"] <= e["speed/dense_kv_entries"] and e["speed/routed_generate_tok_s"] > 0
    if harness:
        assert 0 <= e["harness/tiny_mc/acc_base"] <= 1 and 0 <= e["harness/tiny_mc/acc_routed"] <= 1
        assert "lm-evaluation-harness: base vs routed" in proc.stdout and "tiny_mc/acc" in proc.stdout


def test_dry_run_reports_a_steps_training_flops(hf_dir, tmp_path):
    proc = run_modlab(
        "train", "+experiment=hf_mod", f"model.path={hf_dir}", "schedule=constant", "dry_run=true", out_dir=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert m["train/flops_ratio"] < 0.75 and not list(tmp_path.rglob("*.ckpt"))  # C = 0.125 on 2 of 4 layers


@pytest.mark.parametrize(
    "job, table", [("attention", "attention_text"), ("redundancy", "arank"), ("importance", "llm_drop")]
)
def test_analyses_of_the_mod_checkpoint_and_of_the_model_directory(mod_run, hf_dir, tmp_path, job, table):
    for i, source in enumerate((f"ckpt_path={mod_run / 'checkpoints' / 'last.ckpt'}", f"model.path={hf_dir}")):
        extra = () if i == 0 else ("model=hf_causal_lm",)
        out = tmp_path / str(i)
        proc = run_modlab("analyze", job, source, *extra, "calibration.n_per_task=4", out_dir=out)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        r = json.loads((only_run_dir(out) / "results.json").read_text())
        assert r["arch"] == "hf" and {row["layer"] for row in r["results"][table]} == {0, 1, 2, 3}


def test_redundancy_writes_an_lm_plan_at_the_flops_target_and_mod_trains_with_it(hf_dir, tmp_path):
    """ARank ranks the LM's layers; capacities are allocated to a training-FLOPs target counted
    on the transformers model (modlab.routing.hf_flops); `routing=mod routing.plan=<file>` trains
    the planned layers at the planned capacities, at the predicted FLOPs ratio."""
    from modlab.routing.plan_file import load_plan

    target = ("analysis.plan.target_flops_ratio=0.8", "analysis.plan.fraction=0.75")
    proc = run_modlab(
        "analyze", "redundancy", "model=hf_causal_lm", f"model.path={hf_dir}", "calibration.n_per_task=4", *target,
        out_dir=tmp_path / "a",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan_path = only_run_dir(tmp_path / "a") / "routing_plan.yaml"
    plan = load_plan(plan_path)
    assert list(plan.tasks) == ["lm"] and plan.n_layer == 4
    assert 0 not in plan.tasks["lm"].layers  # layer 0 sizes transformers' decode masks: it keeps every token
    predicted = plan.source["predicted_flops_ratio"]
    assert predicted == pytest.approx(0.8, abs=0.02)
    assert f"+experiment=hf_mod model.path={hf_dir}" in proc.stdout and "routing.plan=" in proc.stdout

    common = ("train", "+experiment=hf_mod", f"model.path={hf_dir}", f"routing.plan={plan_path}", "schedule=constant")
    proc = run_modlab(*common, "dry_run=true", out_dir=tmp_path / "probe")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    measured = json.loads((only_run_dir(tmp_path / "probe") / "metrics.json").read_text())["train/flops_ratio"]
    assert measured == pytest.approx(predicted, rel=0.01)  # the plan's count is the training step's

    proc = run_modlab(*common, *TINY, out_dir=tmp_path / "t")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(only_run_dir(tmp_path / "t") / "checkpoints" / "last.ckpt", weights_only=True)
    routing = ckpt["hyper_parameters"]["routing"]  # the plan's content, not its path
    assert routing["plan"] is None and routing["layers"] == plan.tasks["lm"].layers
    assert routing["layer_capacity"] == pytest.approx(plan.tasks["lm"].capacity)


def importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def hf_chat_dir(tmp_path_factory):
    """The tiny Llama with a byte-level tokenizer that has a chat template."""
    path = save_tiny_hf(tmp_path_factory.mktemp("hf_chat") / "llama")
    return save_tiny_tokenizer(path)


def test_router_tuning_from_alpaca_jsonl_through_the_chat_template(hf_chat_dir, tmp_path):
    alpaca = write_alpaca(tmp_path / "alpaca.jsonl")
    proc = run_modlab(
        "train",
        "+experiment=lm_router_tuning",
        "model=hf_causal_lm",
        f"model.path={hf_chat_dir}",
        "data.lm_format=alpaca",
        f"data.lm_files=[{alpaca}]",
        "data.lm_length=128",
        "mindskip.n_routed=2",
        "debug=fast",
        "callbacks.progress_bar=false",
        out_dir=tmp_path / "t",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "t")
    m = json.loads((run / "metrics.json").read_text())
    assert m["params_trained"] == 2 * 32 and m["test/ppl_base"] > 1.0
    assert (run / "routers.safetensors").is_file()


def test_routers_only_mod_from_alpaca_checkpoints_the_routers_alone_and_reloads(hf_dir, tmp_path):
    alpaca = write_alpaca(tmp_path / "alpaca.jsonl")
    proc = run_modlab(
        "train",
        "+experiment=hf_mod",
        f"model.path={hf_dir}",
        "objective.trainable=routers",
        "routing.causal=predictor",
        "data.lm_format=alpaca",
        f"data.lm_files=[{alpaca}]",
        "data.lm_length=256",
        *TINY,
        out_dir=tmp_path / "t",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "t")
    m = json.loads((run / "metrics.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert keys and all(".router." in k or ".predictor." in k for k in keys)
    assert m["params_trained"] == sum(v.numel() for v in ckpt["state_dict"].values())
    best = next((run / "checkpoints").glob("best-step*.ckpt"))
    proc = run_modlab("eval", f"ckpt_path={best}", "debug=fast", "eval.speed_prompts=0", out_dir=tmp_path / "e")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    e = json.loads((only_run_dir(tmp_path / "e") / "metrics.json").read_text())
    assert e["test/ppl"] == pytest.approx(m["test/ppl"], rel=1e-4)


# ---- bad input: one line, exit code 2 ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (("routing.layers=[1,7]",), ("routing.layers [7] out of range", "0..3")),
        (("routing=unimod",), ("routing=unimod does not apply to model.arch=hf",)),
        (("routing.causal=none",), ("routing.causal=none has no causal decision",)),
        (("mindskip=sequence",), ("routing=mod and mindskip in one run",)),
        (
            ("routing=dense", "objective.trainable=routers"),
            ("objective.trainable=routers, but the run has no routers",),
        ),
        (("model.dtype=float16",), ("model.dtype 'float16' is unknown",)),
    ],
)
def test_bad_hf_training_input_is_one_line_and_exit_2(hf_dir, tmp_path, args, needles):
    proc = run_modlab("train", "+experiment=hf_mod", f"model.path={hf_dir}", *TINY, *args, out_dir=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_bf16_where_the_device_lacks_it_is_one_line(hf_dir, tmp_path):
    proc = run_modlab(
        "train",
        "+experiment=hf_mod",
        f"model.path={hf_dir}",
        "trainer=gpu",
        "model.dtype=bfloat16",
        *TINY,
        out_dir=tmp_path,
    )
    assert_one_line_error(proc, "model.dtype=bfloat16", "no CUDA device", "has no bf16")


def _copy(hf_dir: Path, d: Path) -> Path:
    shutil.copytree(hf_dir, d / "model")
    return d / "model"


def _cut_weights(hf_dir: Path, d: Path) -> Path:
    model = _copy(hf_dir, d)
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return model


def _garbled_header(hf_dir: Path, d: Path) -> Path:
    model = _copy(hf_dir, d)
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[8:12] = b"{bad"
    (model / "model.safetensors").write_bytes(bytes(weights))
    return model


def _special_tokens_only(hf_dir: Path, d: Path) -> Path:
    """A Gemma 3 directory with tokenizer_config.json but no tokenizer.json: transformers builds a
    tokenizer of its 5 special tokens from it, silently."""
    model = save_tiny_hf(d / "gemma", "gemma3_text", vocab_size=600)
    (model / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>"})
    )
    return model


def _unloadable_tokenizer(hf_dir: Path, d: Path) -> Path:
    model = save_tiny_tokenizer(_copy(hf_dir, d))
    (model / "tokenizer.json").unlink()
    return model


def _gguf_only(hf_dir: Path, d: Path) -> Path:
    (d / "model.gguf").write_bytes(b"GGUF")
    return d


# (id, the model directory made from the tiny Llama's, extra environment, needles)
BAD_MODEL_DIRS = [
    ("truncated-weights", _cut_weights, {}, ("model.safetensors is truncated or corrupt",)),
    ("garbled-weights", _garbled_header, {}, ("model.safetensors is not a safetensors file",)),
    (
        "no-tokenizer",
        lambda hf_dir, d: save_tiny_hf(d / "big", vocab_size=600),
        {},
        ("has no tokenizer", "vocabulary of 600", "tokenizer.json"),
    ),
    ("special-tokens-only", _special_tokens_only, {}, ("its tokenizer has only 5 tokens", "of 600", "tokenizer.json")),
    ("unloadable-tokenizer", _unloadable_tokenizer, {}, ("its tokenizer could not be loaded", "tokenizer.json")),
    ("gguf", _gguf_only, {}, ("holds a GGUF file", "python -m modlab.real_lm --gguf")),
    ("too-large", _copy, {"MODLAB_MEMORY_GB": "0.0001"}, ("needs", "in float32", "0.1 MB of memory are available")),
]


@pytest.mark.parametrize("make_dir, env, needles", [c[1:] for c in BAD_MODEL_DIRS], ids=[c[0] for c in BAD_MODEL_DIRS])
def test_a_bad_model_directory_is_one_line_and_exit_2(hf_dir, tmp_path, make_dir, env, needles):
    model = make_dir(hf_dir, tmp_path)
    proc = run_modlab("train", "+experiment=hf_mod", f"model.path={model}", *TINY, out_dir=tmp_path / "o", env=env)
    assert_one_line_error(proc, *needles)


def test_the_memory_check_names_the_models_size_in_the_requested_dtype(hf_dir, tmp_path):
    from transformers import AutoConfig

    from modlab.errors import ConfigError
    from modlab.models.hf_causal_lm import load_hf_causal_lm
    from modlab.models.memory_fit import MEMORY_ENV, parameter_count

    n = parameter_count(AutoConfig.from_pretrained(hf_dir))
    assert n == sum(p.numel() for p in load_hf_causal_lm(str(hf_dir))[0].parameters())
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(MEMORY_ENV, str(size * n / 1e9 * 0.99))
            with pytest.raises(ConfigError, match=f"needs {size * n / 1e6:.1f} MB \\({n:,} parameters in {dtype}\\)"):
                load_hf_causal_lm(str(hf_dir), dtype)
            mp.setenv(MEMORY_ENV, str(size * n / 1e9 * 1.01))
            load_hf_causal_lm(str(hf_dir), dtype)


def test_an_unknown_dtype_from_library_code_is_named(hf_dir):
    from modlab.errors import ConfigError
    from modlab.models.hf_causal_lm import load_hf_causal_lm

    with pytest.raises(ConfigError, match="model.dtype 'float16' is unknown"):
        load_hf_causal_lm(str(hf_dir), "float16")


def test_an_alpaca_file_with_a_missing_field_is_one_line(hf_dir, tmp_path):
    bad = write_alpaca(tmp_path / "bad.jsonl", drop=(2, "output"))
    proc = run_modlab(
        "train",
        "+experiment=hf_mod",
        f"model.path={hf_dir}",
        "data.lm_format=alpaca",
        f"data.lm_files=[{bad}]",
        *TINY,
        out_dir=tmp_path,
    )
    assert_one_line_error(proc, f"{bad} line 3: no 'output' field")


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ("+experiment=lm_pretrain", "model.dtype=bfloat16"),
            ("model.dtype=bfloat16 does not apply to model.arch=lm",),
        ),
        (("+experiment=showo_mod", "objective.trainable=routers"), ("objective.trainable=routers does not apply",)),
        (
            ("+experiment=showo_dense", "data.lm_format=jsonl", "data.lm_files=[x.jsonl]"),
            ("data.lm_format=jsonl reads text for causal LMs",),
        ),
        (("+experiment=lm_router_tuning", "objective.trainable=all"), ("objective.trainable=all with mindskip",)),
        (("+experiment=lm_pretrain", "objective.trainable=some"), ("objective.trainable 'some' is unknown",)),
    ],
)
def test_settings_other_families_cannot_apply_are_one_line(tmp_path, args, needles):
    assert_one_line_error(run_modlab("train", *args, out_dir=tmp_path), *needles)


def test_an_unknown_lm_eval_task_is_one_line(mod_run, tmp_path):
    pytest.importorskip("lm_eval")
    proc = run_modlab(
        "eval",
        f"ckpt_path={mod_run / 'checkpoints' / 'last.ckpt'}",
        "harness.tasks=[no_such_task]",
        f"harness.include_path={tmp_path}",
        out_dir=tmp_path / "e",
        env=offline_env(tmp_path),
    )
    assert_one_line_error(proc, "lm-eval knows no task 'no_such_task'")


def test_fine_tune_on_jsonl_documents_and_a_line_without_the_text_field(hf_dir, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"id": i, "body": f"Document {i} says something. " * 12}) for i in range(60)))
    args = ("train", "+experiment=hf_mod", f"model.path={hf_dir}", "data.lm_format=jsonl", f"data.lm_files=[{docs}]")
    proc = run_modlab(*args, "data.text_field=body", *TINY, out_dir=tmp_path / "ok")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((only_run_dir(tmp_path / "ok") / "metrics.json").read_text())["test/ppl"] > 1
    assert_one_line_error(run_modlab(*args, *TINY, out_dir=tmp_path / "bad"), f"{docs} line 1: no 'text' field")
