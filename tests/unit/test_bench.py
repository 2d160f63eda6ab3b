"""`make bench`'s Hugging Face MoD tables (modlab.bench.hf_mod_tables), at tiny sizes: they run
bench_hf's training-step and decoding benchmarks and print them in rich tables."""

from __future__ import annotations

import json

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
