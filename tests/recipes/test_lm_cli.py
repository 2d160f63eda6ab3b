"""The real `modlab` command on causal LMs: pretrain -> router-tune -> eval (native), router
tuning of a tiny Hugging Face model end to end, and every bad input as one line with exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, assert_one_line_error, only_run_dir, run_modlab, save_tiny_hf

SPEED = ("eval.speed_prompts=2", "eval.speed_context=32", "eval.speed_new_tokens=4", "eval.speed_repeats=1")


def test_router_tuning_then_eval_of_checkpoint_and_router_file(lm_pretrained, tmp_path):
    proc = run_modlab(
        "train",
        "+experiment=lm_router_tuning",
        *TINY,
        "mindskip.n_routed=2",
        f"init_from={lm_pretrained}",
        out_dir=tmp_path / "t",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "t")
    m = json.loads((run / "metrics.json").read_text())
    assert m["params_trained"] == 2 * 32  # two routers of d_model weights, nothing else
    assert 0.0 <= m["test/capacity"] <= 1.0 and m["test/ppl_base"] > 1.0
    assert m["test/skipped_attention_per_seq"] == pytest.approx((1 - m["test/capacity"]) * 2, abs=1e-6)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == {"skip.routers.1.proj.weight", "skip.routers.2.proj.weight"}  # routers alone

    for i, path in enumerate((run / "checkpoints" / "last.ckpt", run / "routers.safetensors")):
        proc = run_modlab("eval", f"ckpt_path={path}", "debug=fast", *SPEED, out_dir=tmp_path / f"e{i}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        e = json.loads((only_run_dir(tmp_path / f"e{i}") / "metrics.json").read_text())
        assert {
            "test/ppl",
            "test/ppl_base",
            "test/capacity",
            "test/ppl_static_drop",
            "speed/base_decode_tok_s",
            "speed/routed_decode_tok_s",
            "speed/routed_decode_speedup_flops",
            "speed/base_prefill_tok_s",
        } <= set(e)
        assert e["test/static_drop_skipped_per_seq"] == round(e["test/skipped_attention_per_seq"])
        assert "metric" in proc.stdout and "speed/routed_decode_tok_s" in proc.stdout  # the rich table
        if i == 0:
            first = e
        else:  # the router file alone rebuilds the same model
            assert e["test/ppl"] == pytest.approx(first["test/ppl"], rel=1e-6)

    # a router-tuned checkpoint holds routers only: it cannot be the base of another tuning
    assert_one_line_error(
        run_modlab(
            "train",
            "+experiment=lm_router_tuning",
            f"init_from={run / 'checkpoints' / 'last.ckpt'}",
            out_dir=tmp_path / "again",
        ),
        "router-tuned",
        "pretrained LM",
    )


def test_router_tuning_of_a_tiny_hf_model_end_to_end(tmp_path):
    hf = save_tiny_hf(tmp_path / "qwen2", "qwen2")
    proc = run_modlab(
        "train",
        "+experiment=lm_router_tuning",
        "model=hf_causal_lm",
        f"model.path={hf}",
        "debug=fast",
        "mindskip.n_routed=2",
        "callbacks.progress_bar=false",
        out_dir=tmp_path / "t",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "t")
    m = json.loads((run / "metrics.json").read_text())
    assert m["params_trained"] == 2 * 32 and m["test/ppl_base"] > 1.0
    proc = run_modlab("eval", f"ckpt_path={run / 'routers.safetensors'}", "debug=fast", *SPEED, out_dir=tmp_path / "e")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    e = json.loads((only_run_dir(tmp_path / "e") / "metrics.json").read_text())
    assert e["test/ppl_base"] == pytest.approx(m["test/ppl_base"], rel=1e-3)


# ---- bad input: one line, exit code 2 ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (("+experiment=lm_router_tuning",), ("needs init_from",)),
        (("+experiment=lm_router_tuning", "init_from=/no/such.ckpt"), ("init_from '/no/such.ckpt' does not exist",)),
        (
            ("+experiment=lm_router_tuning", "mindskip.target_capacity=0"),
            ("mindskip.target_capacity must be in (0, 1]",),
        ),
        (
            ("+experiment=lm_router_tuning", "mindskip.target_capacity=1.5"),
            ("mindskip.target_capacity must be in (0, 1]",),
        ),
        (
            ("+experiment=lm_router_tuning", "model=hf_causal_lm", "model.path=/no/such/dir"),
            ("not a Hugging Face model directory",),
        ),
        (("+experiment=lm_router_tuning", "model=hf_causal_lm"), ("needs model.path",)),
        (("+experiment=lm_pretrain", "model=showo"), ("model.arch=showo", "trains with objective=unified")),
        (("+experiment=showo_dense", "model=lm"), ("model.arch=lm", "trains with objective=lm")),
        (("+experiment=lm_pretrain", "routing=mod"), ("routing=mod does not apply to model.arch=lm",)),
        (("+experiment=showo_dense", "mindskip=sequence"), ("mindskip does not apply to model.arch=showo",)),
        (("+experiment=lm_router_tuning", "mindskip.granularity=layer"), ("mindskip.granularity",)),
    ],
)
def test_bad_lm_input_is_one_line_and_exit_2(tmp_path, args, needles):
    assert_one_line_error(run_modlab("train", *args, out_dir=tmp_path), *needles)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_bad_base_checkpoints_and_layers_are_one_line_errors(lm_pretrained, tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "image_tokenizer": {}}, foreign)  # a unified-model layout
    assert_one_line_error(
        run_modlab("train", "+experiment=lm_router_tuning", f"init_from={foreign}", out_dir=tmp_path),
        "not an LM checkpoint",
    )
    assert_one_line_error(
        run_modlab(
            "train",
            "+experiment=lm_router_tuning",
            f"init_from={lm_pretrained}",
            "mindskip.layers=[1,7]",
            out_dir=tmp_path,
        ),
        "out of range",
        "0..3",
    )
    not_hf = tmp_path / "not_hf"
    not_hf.mkdir()
    (not_hf / "config.json").write_text('{"model_type": "bert"}')
    assert_one_line_error(
        run_modlab(
            "train", "+experiment=lm_router_tuning", "model=hf_causal_lm", f"model.path={not_hf}", out_dir=tmp_path
        ),
        "holds a 'bert' model",
        "supported: llama",
    )
    assert_one_line_error(
        run_modlab("eval", f"ckpt_path={tmp_path / 'none.safetensors'}", out_dir=tmp_path), "does not exist"
    )
