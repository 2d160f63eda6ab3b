"""`make bench`: speed ratios, printed as a rich table and written to a JSON file.

Benchmarks are never part of the tests (timings on a shared 2-core machine are noisy); they
report ratios measured in one process. Things compared are timed in alternation (dense, routed,
dense, routed, ...) so a change of machine load hits both sides alike, and each keeps its fastest
repeat: the least-disturbed run, as `timeit` advises.

Tables: the Show-o-like training step in fp32 vs bf16 autocast (the choice
`trainer.precision=auto` makes); a routed block vs the dense block at several capacities beside
the FLOPs-predicted speed-up; the routed experiments' training step vs showo_dense; MindSkip
batch-1 prefill / decode vs the base causal LM at several context lengths; Emu3-like image
generation with the KV cache vs recomputing the prefix, and MoD with the compact cache vs dense
(tokens/s, cached K/V entries and MiB); Mixture-of-Depths inside
a tiny Hugging Face Llama (modlab.bench_hf): the training step at capacity 0.125 on every other
layer vs the unmodified model beside its FLOPs-predicted speed-up, and batch-1 greedy decoding
with the compact KV cache vs dense (decode tok/s, cached K/V entries and MiB).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from modlab.data.config import DataConfig
from modlab.data.digits import caption
from modlab.data.rows import collate_rows, t2i_row
from modlab.data.tokens import TokenSpace
from modlab.flops import block_forward_flops, router_forward_flops, traced_train_step_flops
from modlab.mindskip.config import MindSkipConfig
from modlab.mindskip.gate import MindSkip
from modlab.mindskip.inference import measure_speed
from modlab.models.causal_lm import CausalLM
from modlab.models.config import ModelConfig
from modlab.models.omni_attention import causal_mask
from modlab.models.transformer import Block
from modlab.routing.config import RoutingConfig
from modlab.routing.install import RouteInfo, apply_routing, install_routing
from modlab.routing.routed_block import RoutedBlock
from modlab.routing.trace import record_routing
from modlab.training.config import EvalConfig
from modlab.training.digits_datamodule import DigitsDataModule
from modlab.training.unified import build_unified_model


def _interleaved_seconds(fns: dict, repeats: int = 9, warmup: int = 2) -> dict:
    """Seconds per call of each fn, timed in alternation; the fastest of `repeats` runs each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def _experiment_batches():
    """One training step's task batches of the showo experiments (the default data config)."""
    dm = DigitsDataModule(DataConfig(), EvalConfig())
    return dm, [next(iter(loader)) for loader in dm.train_dataloader().iterables.values()]


def _train_step(model, batches: list[dict], bf16: bool):
    """A step as UnifiedModule trains: one forward per task batch, one backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def batch_loss(b: dict) -> torch.Tensor:
        with record_routing(model) as trace:
            loss = sum(model.task_losses(model.training_batch(b, 0.1)).values())
        aux, _ = trace.causal_stats()  # the routers' causal-decision loss, as in training
        return loss if aux is None else loss + 0.01 * aux

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(batch_loss(b) for b in batches)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def training_step_precision() -> dict:
    dm, batches = _experiment_batches()
    torch.manual_seed(0)
    model = build_unified_model(ModelConfig(), dm.space, dm.image_tokenizer.n_tokens)
    t = _interleaved_seconds({"fp32": _train_step(model, batches, False), "bf16": _train_step(model, batches, True)})
    fp32, bf16 = t["fp32"], t["bf16"]
    return {
        "rows": sum(int(b["ids"].shape[0]) for b in batches),
        "fp32_s": fp32,
        "bf16_s": bf16,
        "speedup_bf16": fp32 / bf16,
    }


def routed_training_step() -> list[dict]:
    """The showo_unimod / showo_mod training step against showo_dense on the same batch: time
    cut beside the FLOPs cut (bf16 autocast, as `precision: auto` trains here)."""
    # the front end's config (omegaconf, modlab.conf) only for this benchmark
    from omegaconf import OmegaConf

    import modlab.conf

    conf = Path(modlab.conf.__file__).parent / "routing"  # the experiments' routing configs
    dm, batches = _experiment_batches()
    cfg = ModelConfig()
    rows, steps = [], {}
    for name in ("dense", "unimod", "mod"):
        routing = RoutingConfig(**OmegaConf.to_container(OmegaConf.load(conf / f"{name}.yaml")))
        torch.manual_seed(0)
        model = build_unified_model(cfg, dm.space, dm.image_tokenizer.n_tokens)
        apply_routing(model.transformer.blocks, cfg.d_model, routing)
        steps[name] = _train_step(model, batches, bf16=True)
        flops = 0
        for batch in batches:  # the FLOPs of each task batch's forward, as the training step counts
            with record_routing(model) as trace:
                model.task_losses(model.training_batch(batch, 0.1))
            flops += traced_train_step_flops(cfg, dm.space.vocab_size, trace, *batch["ids"].shape)
        rows.append({"routing": name, "flops": flops})
    seconds = _interleaved_seconds(steps)
    for r in rows:
        r["seconds"] = seconds[r["routing"]]
    dense = rows[0]
    for r in rows:
        r["time_cut"] = 1 - r["seconds"] / dense["seconds"]
        r["flops_cut"] = 1 - r["flops"] / dense["flops"]
        r["time_cut_over_flops_cut"] = r["time_cut"] / r["flops_cut"] if r["flops_cut"] > 0 else float("nan")
    return rows


def routed_block_speed(
    capacities=(0.125, 0.25, 0.5), T: int = 1024, d: int = 512, n_head: int = 8, B: int = 1
) -> list[dict]:
    """A routed block's forward + backward against the dense block, beside the FLOPs-predicted
    speed-up (dense FLOPs / routed FLOPs, router included). fp32, causal mask."""
    cfg = ModelConfig(d_model=d, n_layer=1, n_head=n_head)
    torch.manual_seed(0)
    block = Block(cfg)
    x = torch.randn(B, T, d, requires_grad=True)
    positions = torch.arange(T).expand(B, T)
    valid = torch.ones(B, T, dtype=torch.bool)
    mask = causal_mask(valid)
    route = RouteInfo(task=torch.zeros(B, dtype=torch.long), valid=valid)

    def step(fn):
        return lambda: fn(x, positions, mask).sum().backward()

    routed = {c: RoutedBlock(block, d, [c]) for c in capacities}
    steps = {"dense": step(block)} | {c: step(lambda *a, rb=rb: rb(*a, route)) for c, rb in routed.items()}
    seconds = _interleaved_seconds(steps)
    dense_s = seconds["dense"]
    dense_flops = block_forward_flops(cfg, B, T)
    rows = []
    for c, rb in routed.items():
        routed_s = seconds[c]
        with record_routing(rb) as trace:
            rb(x, positions, mask, route)
        k = trace.last().groups[0][1]
        routed_flops = block_forward_flops(cfg, B, k) + router_forward_flops(B, T, rb.routing_weights())
        predicted, measured = dense_flops / routed_flops, dense_s / routed_s
        rows.append(
            {
                "capacity": c,
                "dense_s": dense_s,
                "routed_s": routed_s,
                "predicted_speedup": predicted,
                "measured_speedup": measured,
                "measured_over_predicted": measured / predicted,
            }
        )
    return rows


def mindskip_generation_speed(
    contexts=(128, 512, 2048),
    new_tokens: int = 64,
    repeats: int = 5,
    d_model: int = 96,
    n_layer: int = 8,
    n_head: int = 3,
) -> list[dict]:
    """Batch-1 prefill and decode of the tiny causal LM (lm_pretrain's shape) with MindSkip at
    capacity 0.5 over the default routed layers (half of them closed at prefill, as the tuned
    routers decide) against the base, beside the FLOPs-predicted speed-up. fp32, KV cache."""
    torch.manual_seed(0)
    lm = CausalLM(ModelConfig(arch="lm", d_model=d_model, n_layer=n_layer, n_head=n_head)).eval()
    routed = MindSkipConfig().routed_layers(n_layer)
    skip = MindSkip(lm, routed)
    closed = routed[len(routed) // 2 :]  # capacity 0.5: the deeper half of the routed layers closed
    rows = []
    for T in contexts:
        prompts = [torch.randint(0, 256, (1, T))]
        r = measure_speed(
            lm,
            skip,
            prompts,
            new_tokens,
            {"base": {"routers": False}, "mindskip": {"routers": False, "closed": closed}},
            repeats,
        )
        b, m = r["base"], r["mindskip"]
        rows.append(
            {
                "context": T,
                "closed_layers": closed,
                "base_prefill_tok_s": b["prefill_tok_s"],
                "mindskip_prefill_tok_s": m["prefill_tok_s"],
                "prefill_speedup": m["prefill_tok_s"] / b["prefill_tok_s"],
                "prefill_speedup_flops": b["prefill_flops"] / m["prefill_flops"],
                "base_decode_tok_s": b["decode_tok_s"],
                "mindskip_decode_tok_s": m["decode_tok_s"],
                "decode_speedup": m["decode_tok_s"] / b["decode_tok_s"],
                "decode_speedup_flops": b["decode_flops"] / m["decode_flops"],
            }
        )
    for r in rows:
        r["decode_measured_over_predicted"] = r["decode_speedup"] / r["decode_speedup_flops"]
    return rows


def emu3_generation_speed(batch: int = 4, guidance: float = 1.5, repeats: int = 3, n_layer: int = 4) -> dict:
    """Emu3-like T2I generation of digits-sized images (64 pixel codes after the evaluation
    caption; d=128, 4 layers, fp32), `batch` prompts with classifier-free guidance (2 x batch
    rows), greedy: with the KV cache vs recomputing the prefix for every token (dense), and MoD
    (layers 1, 3, causal aux_bce, threshold routing: untrained routers, so about half the tokens
    run them) with the compact cache vs dense with the cache. Tokens/s are image tokens drawn per
    second, prefill included; K/V entries and MiB are what the caches hold at the end. That the
    cache draws the same images as recomputation is what the tests check (test_emu3_kv_cache)."""
    space, n_image = TokenSpace(17), 64
    cfg = ModelConfig(arch="emu3", n_layer=n_layer)
    torch.manual_seed(0)
    dense = build_unified_model(cfg, space, n_image).eval()
    routed = copy.deepcopy(dense)
    layers = list(range(1, n_layer, 2))
    install_routing(routed.transformer.blocks, cfg.d_model, {i: [0.125] for i in layers}, "ste_sigmoid", "aux_bce")
    prompts = collate_rows([t2i_row(space, caption(b % 10, 0), None, n_image, b % 10) for b in range(batch)], space.pad)

    def generate(model, use_cache: bool):
        return lambda: model.draw_images(prompts, lambda logits: logits.argmax(-1), guidance, use_cache)

    runs = {"recompute": generate(dense, False), "dense": generate(dense, True), "mod": generate(routed, True)}
    seconds = _interleaved_seconds(runs, repeats, warmup=1)
    (dense_codes, dense_cache), (mod_codes, mod_cache) = runs["dense"](), runs["mod"]()
    tok_s = {name: batch * n_image / s for name, s in seconds.items()}
    dense_rows, mod_rows = dense_cache.row_entries(), mod_cache.row_entries()  # (rows,) per layer
    dense_entries, mod_entries = (sum(int(e.sum()) for e in rows) for rows in (dense_rows, mod_rows))
    return {
        "rows": 2 * batch if guidance > 0 else batch,
        "image_tokens": n_image,
        "routed_layers": layers,
        "fraction_that_ran_routed_layers": {i: float(mod_rows[i].sum() / dense_rows[i].sum()) for i in layers},
        "recompute_tok_s": tok_s["recompute"],
        "dense_cached_tok_s": tok_s["dense"],
        "mod_cached_tok_s": tok_s["mod"],
        "cache_speedup": tok_s["dense"] / tok_s["recompute"],
        "mod_speedup_over_dense_cached": tok_s["mod"] / tok_s["dense"],
        "dense_kv_entries": dense_entries,
        "mod_kv_entries": mod_entries,
        "dense_kv_mib": dense_cache.entry_bytes() / 2**20,
        "mod_kv_mib": mod_cache.entry_bytes() / 2**20,
        "kv_saving": 1 - mod_entries / dense_entries,
        "same_images_mod_as_dense": bool(torch.equal(mod_codes, dense_codes)),  # untrained routers: not expected
    }


def emu3_generation_table(console, results: dict, **kwargs) -> None:
    """The Emu3-like generation benchmark (emu3_generation_speed(**kwargs)) as a rich table."""
    with console.status("Emu3-like image generation: KV cache vs recompute, MoD compact cache vs dense"):
        results["emu3_generation"] = r = emu3_generation_speed(**kwargs)
    ran = ", ".join(f"{i}: {f:.0%}" for i, f in r["fraction_that_ran_routed_layers"].items())
    console.print(
        _table(
            f"Emu3-like greedy image generation ({r['rows']} rows with guidance, {r['image_tokens']} image "
            f"tokens, d=128, fp32): KV cache vs recompute; MoD, threshold routing, compact KV cache vs dense "
            f"cached (tokens that ran routed layers {ran})",
            (
                "tok/s recompute",
                "tok/s dense cached",
                "cache speed-up",
                "tok/s MoD cached",
                "MoD / dense cached",
                "KV entries dense",
                "KV entries MoD",
                "KV MiB dense",
                "KV MiB MoD",
                "KV saved",
            ),
            [
                (
                    f"{r['recompute_tok_s']:.0f}",
                    f"{r['dense_cached_tok_s']:.0f}",
                    f"{r['cache_speedup']:.2f}x",
                    f"{r['mod_cached_tok_s']:.0f}",
                    f"{r['mod_speedup_over_dense_cached']:.2f}x",
                    str(r["dense_kv_entries"]),
                    str(r["mod_kv_entries"]),
                    f"{r['dense_kv_mib']:.2f}",
                    f"{r['mod_kv_mib']:.2f}",
                    f"{r['kv_saving']:.1%}",
                )
            ],
        )
    )


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]):
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def hf_emu3_generation_table(console, results: dict, **kwargs) -> None:
    """Hugging Face Emu3 generation, UniMoD compact cache vs dense cached (modlab.bench_hf)."""
    try:
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.bench_hf import bench_hf_emu3_generation
    except ImportError:  # transformers is the optional `hf` extra
        return
    rows = []
    for hidden in (128, 512):
        with console.status(f"HF Emu3 generation (hidden {hidden}): UniMoD compact KV cache vs dense cached"):
            r = bench_hf_emu3_generation(hidden=hidden, **kwargs)
        results.setdefault("hf_emu3_generation", []).append(r)
        kept = ", ".join(f"{i}: {f:.0%}" for i, f in r["kv_kept_in_routed_layers"].items())
        rows.append(
            (
                str(hidden),
                kept,
                f"{r['dense_tok_s']:.0f}",
                f"{r['routed_tok_s']:.0f}",
                f"{r['speedup']:.2f}x",
                f"{r['kv_saving']:.1%}",
            )
        )
    console.print(
        _table(
            f"HF Emu3 greedy image generation ({r['n_layer']} layers, {r['rows']} rows with guidance, "
            f"{r['image_tokens']} image tokens, fp32): UniMoD at 0.125 on image tokens of layers "
            f"{r['routed_layers']}, routers fitted to the causal decision, compact KV cache vs dense cached",
            ("hidden", "KV kept per routed layer", "tok/s dense", "tok/s UniMoD", "speed-up", "KV saved"),
            rows,
        )
    )


def hf_mod_tables(console, results: dict, training: dict | None = None, decoding: dict | None = None) -> None:
    """The HF MoD training step and compact-cache decoding (modlab.bench_hf), if transformers is
    installed; `training` / `decoding`: keyword arguments of bench_hf's functions (default: the issue's sizes)."""
    try:
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.bench_hf import bench_hf_mod_decoding, bench_hf_mod_training
    except ImportError:  # transformers is the optional `hf` extra
        console.print("HF MoD benchmarks skipped: transformers is not installed (pip install 'modlab[hf]')")
        return
    with console.status("HF Llama MoD training step: capacity 0.125 on layers 1, 3 vs unmodified"):
        results["hf_mod_training"] = r = bench_hf_mod_training(**(training or {}))
    console.print(
        _table(
            f"HF Llama MoD training step (4 layers, d=512, 8 heads, batch {r['batch']} x {r['seq']} tokens, "
            f"capacity {r['capacity']} on layers {r['routed_layers']}, fp32, forward + backward)",
            ("dense s", "routed s", "FLOPs-predicted speed-up", "measured speed-up", "measured / predicted"),
            [
                (
                    f"{r['dense_s']:.3f}",
                    f"{r['routed_s']:.3f}",
                    f"{r['predicted_speedup']:.2f}x",
                    f"{r['measured_speedup']:.2f}x",
                    f"{r['measured_over_predicted']:.2f}",
                )
            ],
        )
    )
    with console.status("HF Llama MoD decoding: compact KV cache vs dense"):
        results["hf_mod_decoding"] = r = bench_hf_mod_decoding(**(decoding or {}))
    ran = ", ".join(f"{i}: {f:.0%}" for i, f in r["fraction_that_ran_routed_layers"].items())
    console.print(
        _table(
            f"HF Llama MoD batch-1 greedy decoding, threshold routing, compact KV cache vs dense "
            f"(prompt {r['prompt']}, {r['new_tokens']} new tokens; tokens that ran routed layers {ran})",
            (
                "decode tok/s dense",
                "decode tok/s routed",
                "decode speed-up",
                "KV MiB dense",
                "KV MiB routed",
                "KV saved",
            ),
            [
                (
                    f"{r['dense_decode_tok_s']:.0f}",
                    f"{r['routed_decode_tok_s']:.0f}",
                    f"{r['decode_speedup']:.2f}x",
                    f"{r['dense_kv_mib']:.2f}",
                    f"{r['routed_kv_mib']:.2f}",
                    f"{r['kv_saving']:.1%}",
                )
            ],
        )
    )


DECODE_WIDTHS = (128, 256, 512, 1024)
DECODE_BATCHES = (1, 8)
DECODE_FRACTIONS = (0.25, 0.5, 0.75)


def decode_table(
    console, results: dict, widths=DECODE_WIDTHS, batches=DECODE_BATCHES, fractions=DECODE_FRACTIONS, **kw
):
    """Routed decoding with the compact KV cache vs dense cached, across widths, batch sizes and
    the fraction of tokens the routers run (modlab.bench_hf.bench_hf_decode: a 4-layer HF Llama,
    layers 1 and 3 routed), beside the FLOPs-predicted speed-up and KV memory."""
    try:
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from modlab.bench_hf import bench_hf_decode
    except ImportError:  # transformers is the optional `hf` extra
        return
    rows, out = [], results.setdefault("decode_table", [])
    for d in widths:
        for b in batches:
            for f in fractions:
                with console.status(f"decoding, hidden {d}, batch {b}, {f:.0%} of tokens run the routed layers"):
                    r = bench_hf_decode(hidden=d, batch=b, fraction=f, **kw)
                out.append(r)
                ran = "/".join(f"{v:.0%}" for v in r["ran"].values())
                rows.append(
                    (
                        str(d),
                        str(b),
                        f"{f:.0%}",
                        ran,
                        f"{r['dense_tok_s']:.0f}",
                        f"{r['routed_tok_s']:.0f}",
                        f"{r['speedup']:.2f}x",
                        f"{r['predicted_speedup']:.2f}x",
                        f"{r['measured_over_predicted']:.2f}",
                        f"{r['dense_kv_mib']:.2f}",
                        f"{r['routed_kv_mib']:.2f}",
                    )
                )
    r = out[-1]
    console.print(
        _table(
            f"HF Llama greedy decoding ({r['n_layer']} layers, layers {r['routed_layers']} routed by threshold, "
            "routers set to run a fraction of the tokens), compact KV cache vs dense cached, fp32, decode only",
            (
                "hidden",
                "batch",
                "target run",
                "ran (per layer)",
                "tok/s dense",
                "tok/s routed",
                "speed-up",
                "FLOPs-predicted",
                "measured / predicted",
                "KV MiB dense",
                "KV MiB routed",
            ),
            rows,
        )
    )


def main() -> None:
    console = Console()
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    with console.status("showo_dense training step: fp32 vs bf16 autocast"):
        results["training_step_precision"] = r = training_step_precision()
    console.print(
        _table(
            f"Show-o-like training step ({r['rows']} rows, {results['threads']} threads)",
            ("fp32 s/step", "bf16 s/step", "bf16 speed-up"),
            [(f"{r['fp32_s']:.3f}", f"{r['bf16_s']:.3f}", f"{r['speedup_bf16']:.2f}x")],
        )
    )

    with console.status("routed block vs dense block, T=1024, d=512"):
        results["routed_block"] = rows = routed_block_speed()
    console.print(
        _table(
            "Routed block forward+backward vs dense (T=1024, d=512, fp32)",
            (
                "capacity",
                "dense s",
                "routed s",
                "FLOPs-predicted speed-up",
                "measured speed-up",
                "measured / predicted",
            ),
            [
                (
                    f"{r['capacity']}",
                    f"{r['dense_s']:.4f}",
                    f"{r['routed_s']:.4f}",
                    f"{r['predicted_speedup']:.2f}x",
                    f"{r['measured_speedup']:.2f}x",
                    f"{r['measured_over_predicted']:.2f}",
                )
                for r in rows
            ],
        )
    )

    with console.status("showo training step: dense vs unimod vs mod"):
        results["routed_training_step"] = rows = routed_training_step()
    console.print(
        _table(
            "Show-o-like training step, routed vs dense (same batch, bf16 autocast)",
            ("routing", "s/step", "GFLOPs/step", "FLOPs cut", "time cut", "time cut / FLOPs cut"),
            [
                (
                    r["routing"],
                    f"{r['seconds']:.3f}",
                    f"{r['flops'] / 1e9:.1f}",
                    f"{r['flops_cut']:.1%}",
                    f"{r['time_cut']:.1%}",
                    "-" if r["routing"] == "dense" else f"{r['time_cut_over_flops_cut']:.2f}",
                )
                for r in rows
            ],
        )
    )

    with console.status("MindSkip generation: batch 1, base vs capacity 0.5"):
        results["mindskip_generation"] = rows = mindskip_generation_speed()
    console.print(
        _table(
            f"MindSkip batch-1 generation, capacity 0.5 (layers {rows[0]['closed_layers']} skipped) "
            "vs base (d=96, 8 layers, fp32)",
            (
                "context",
                "prefill tok/s base",
                "prefill tok/s skip",
                "prefill speed-up",
                "FLOPs-predicted",
                "decode tok/s base",
                "decode tok/s skip",
                "decode speed-up",
                "FLOPs-predicted",
                "measured / predicted",
            ),
            [
                (
                    str(r["context"]),
                    f"{r['base_prefill_tok_s']:.0f}",
                    f"{r['mindskip_prefill_tok_s']:.0f}",
                    f"{r['prefill_speedup']:.2f}x",
                    f"{r['prefill_speedup_flops']:.2f}x",
                    f"{r['base_decode_tok_s']:.0f}",
                    f"{r['mindskip_decode_tok_s']:.0f}",
                    f"{r['decode_speedup']:.2f}x",
                    f"{r['decode_speedup_flops']:.2f}x",
                    f"{r['decode_measured_over_predicted']:.2f}",
                )
                for r in rows
            ],
        )
    )

    emu3_generation_table(console, results)

    hf_mod_tables(console, results)
    hf_emu3_generation_table(console, results)
    decode_table(console, results)

    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results: [bold]{path}[/bold]")


if __name__ == "__main__":
    main()
