"""`make bench`'s Hugging Face MoD tables (modlab.bench.hf_mod_tables), at tiny sizes: they run
bench_hf's training-step and decoding benchmarks and print them in rich tables."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from modlab.bench import hf_mod_tables


def test_hf_mod_tables_print_the_training_and_decoding_benchmarks():
    console = Console(record=True, width=200)
    results: dict = {}
    hf_mod_tables(
        console,
        results,
        training={"batch": 1, "seq": 32, "capacity": 0.25, "repeats": 1},
        decoding={"prompt": 16, "new": 4, "repeats": 1},
    )
    text = console.export_text()
    assert "HF Llama MoD training step" in text and "FLOPs-predicted speed-up" in text
    assert "compact KV cache vs dense" in text and "KV saved" in text
    t, d = results["hf_mod_training"], results["hf_mod_decoding"]
    assert t["kept_per_routed_layer"] == 8 and t["predicted_speedup"] > 1.0 and t["dense_s"] > 0
    # the routed layers' cache holds only the tokens that ran them
    assert d["routed_kv_entries"] < d["dense_kv_entries"] and 0 < d["kv_saving"] < 1
    json.dumps(results)  # what bench.py writes


def test_emu3_generation_table_prints_cache_speed_and_kv_memory():
    from modlab.bench import emu3_generation_table
    from modlab.data.digits import caption

    console = Console(record=True, width=250)
    results: dict = {}
    emu3_generation_table(console, results, batch=2, repeats=1, n_layer=2)
    text = console.export_text()
    assert "Emu3-like greedy image generation" in text and "cache speed-up" in text and "KV saved" in text
    r = results["emu3_generation"]
    assert r["rows"] == 4 and r["routed_layers"] == [1]
    # dense caches every real token it ran, in both layers: each caption with [T2I] and [SOI], the
    # guidance rows' [T2I] [SOI] alone, and every row's image tokens but the last (never fed back)
    captions = sum(len(caption(d, 0)) for d in (0, 1))
    assert r["dense_kv_entries"] == 2 * (captions + 4 * 2 + 4 * 63)
    assert r["mod_kv_entries"] < r["dense_kv_entries"]
    assert r["recompute_tok_s"] > 0 and 0 < r["kv_saving"] < 1
    json.dumps(results)


def test_hf_emu3_generation_table_prints_compact_cache_speed():
    from modlab.bench import hf_emu3_generation_table

    console = Console(record=True, width=250)
    results: dict = {}
    hf_emu3_generation_table(console, results, n_layer=2, batch=2, repeats=1, fit_steps=30)
    assert "HF Emu3 greedy image generation" in console.export_text()
    for r in results["hf_emu3_generation"]:
        assert r["routed_layers"] == [1] and r["rows"] == 4
        # the routed layer's cache holds only the tokens that ran it; the dense one every token
        assert r["routed_kv_entries"] < r["dense_kv_entries"] and r["routed_tok_s"] > 0
    json.dumps(results)


def test_the_gpu_benchmark_runs_at_a_tiny_size_on_cpu():
    """modlab.bench_gpu is meant for CUDA; at its tiny size it runs here, so it cannot rot."""
    from modlab.bench_gpu import run

    r = run(device="cpu", size="tiny", repeats=1)
    t, d = r["training"], r["decoding"]
    assert r["dtype"] == "float32" and r["peak_tflops"] > 0
    assert t["predicted_speedup"] > 1.0 and t["dense_tok_s"] > 0 and 0 < t["dense_mfu"]
    assert t["routed_layers"] == [1, 3] and d["routed_layers"] == [1, 3]
    # the routers were pointed to run about half the tokens: the routed layers skipped some, ran some
    assert all(0 < f < 1 for f in d["ran"].values())
    assert d["predicted_speedup"] > 1.0 and d["routed_kv_mib"] < d["dense_kv_mib"] and d["routed_mfu"] > 0
    json.dumps(r)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_the_gpu_benchmark_refuses_cuda_without_a_device_in_one_line():
    from helpers import assert_one_line_error

    proc = subprocess.run(
        [sys.executable, "-m", "modlab.bench_gpu", "--device", "cuda", "--size", "tiny"], capture_output=True, text=True
    )
    assert_one_line_error(proc, "--device cuda", "no CUDA device")


def test_the_decode_table_prints_routed_vs_dense_across_widths():
    from modlab.bench import decode_table

    console = Console(record=True, width=250)
    results: dict = {}
    decode_table(console, results, widths=(32,), batches=(1, 3), fractions=(0.5,), prompt=12, new=4, repeats=1)
    assert "compact KV cache vs dense cached" in console.export_text()
    rows = results["decode_table"]
    assert [(r["hidden"], r["batch"]) for r in rows] == [(32, 1), (32, 3)]
    for r in rows:
        assert r["predicted_speedup"] > 1.0 and r["routed_kv_mib"] < r["dense_kv_mib"] and r["routed_tok_s"] > 0
    json.dumps(results)


def test_dense_decoding_vs_transformers_generate_runs_and_both_loops_decode():
    """`python -m modlab.bench_hf --vs-generate [DIR]` at a tiny size: both loops produce a
    positive decode rate and the ratio is theirs (the figures themselves are bench output)."""
    from modlab.bench_hf import bench_decode_vs_generate

    r = bench_decode_vs_generate(prompt=16, new=4, repeats=1)
    assert r["modlab_decode_tok_s"] > 0 and r["generate_decode_tok_s"] > 0
    assert r["modlab_over_generate"] == pytest.approx(r["modlab_decode_tok_s"] / r["generate_decode_tok_s"])
