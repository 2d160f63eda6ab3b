"""A GPU benchmark of routed training and decoding in a Hugging Face Llama, ready to run:

    python -m modlab.bench_gpu --device cuda                  # (or `make bench-gpu`) the realistic size
    python -m modlab.bench_gpu --device cpu --size tiny       # what the tests run

bf16 weights on CUDA (fp32 on CPU). Two measurements, each routed vs the same model dense, timed
in alternation with the device synchronised around every call (medians):

- the MoD training step (forward + backward, capacity C on every other layer from layer 1, top-k)
  at a realistic size (8 layers, hidden 2048, batch 8 x 2,048 tokens): tokens/s, the measured
  vs the FLOPs-predicted speed-up (modlab.routing.hf_flops.train_step_flops on the kept counts the
  step really ran) and MFU, model FLOPs / s against the device's bf16 dense peak;
- greedy decoding with the compact KV cache (threshold routing, routers set to run a fraction
  of the tokens) vs transformers' cache: decode tokens/s, speed-up beside its FLOPs prediction
  at the fractions that really ran, MFU, KV memory.

Peaks come from a table of known devices (`--peak-tflops` overrides; a device it does not know
reports no MFU). On CPU the peak is what one large fp32 matmul measures here. Prints JSON.
Asking for CUDA where there is none is a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

from modlab.errors import ConfigError

# bf16 dense (no sparsity) tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name()
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}

SIZES = {
    # layers, hidden, heads, train batch x seq, decode batch, prompt, new tokens
    "realistic": dict(n_layer=8, hidden=2048, heads=16, batch=8, seq=2048, decode_batch=8, prompt=512, new=128),
    "tiny": dict(n_layer=4, hidden=64, heads=2, batch=2, seq=32, decode_batch=2, prompt=16, new=6),
}


def resolve_device(device: str) -> torch.device:
    """The device asked for; CUDA where there is none is a one-line ConfigError."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"--device must be cpu or cuda[:N], got '{device}'")
    return torch.device(device)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it comes from) for MFU."""
    if override:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in BF16_PEAK_TFLOPS.items():
            if key in name:
                return tflops, f"bf16 dense peak of {key} ({name})"
        return None, f"unknown device {name}: pass --peak-tflops"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * n**3 / (time.perf_counter() - t) / 1e12, "one fp32 1024^3 matmul measured here"


def llama(size: dict, seq: int, device, dtype):
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=size["hidden"],
        num_hidden_layers=size["n_layer"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"],
        intermediate_size=int(size["hidden"] * 8 / 3) // 64 * 64,
        vocab_size=32000 if size["hidden"] >= 1024 else 1024,
        max_position_embeddings=seq,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).to(device=device, dtype=dtype), config


def bench_training(size: dict, capacity: float, repeats: int, device, dtype, peak) -> dict:
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from modlab.bench_hf import median_seconds, routed_groups, train_step
    from modlab.routing.hf_flops import train_step_flops
    from modlab.routing.hf_routed_layer import install_hf_routing

    torch.manual_seed(0)
    dense, config = llama(size, size["seq"], device, dtype)
    dense.train()
    routed = copy.deepcopy(dense)
    layers = list(range(1, size["n_layer"], 2))
    install_hf_routing(routed, {i: [capacity] for i in layers})
    B, T = size["batch"], size["seq"]
    ids = torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
    s = median_seconds(
        {"dense": lambda: train_step(dense, ids), "routed": lambda: train_step(routed, ids)}, repeats, device
    )
    dense_flops = train_step_flops(dense, B, T)
    routed_flops = train_step_flops(routed, B, T, routed_groups(routed, lambda: train_step(routed, ids)))
    measured, predicted = s["dense"] / s["routed"], dense_flops / routed_flops
    return {
        "layers": size["n_layer"],
        "hidden": size["hidden"],
        "batch": B,
        "seq": T,
        "capacity": capacity,
        "routed_layers": layers,
        "dense_s": s["dense"],
        "routed_s": s["routed"],
        "dense_tok_s": B * T / s["dense"],
        "routed_tok_s": B * T / s["routed"],
        "measured_speedup": measured,
        "predicted_speedup": predicted,
        "measured_over_predicted": measured / predicted,
        "dense_mfu": dense_flops / s["dense"] / (peak * 1e12) if peak else None,
        # the routed step's useful work is the dense model's: MFU of the FLOPs it really ran
        "routed_mfu": routed_flops / s["routed"] / (peak * 1e12) if peak else None,
    }


def bench_decoding(size: dict, fraction: float, repeats: int, device, dtype, peak) -> dict:
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from modlab.bench_hf import bench_hf_decode

    r = bench_hf_decode(
        hidden=size["hidden"],
        batch=size["decode_batch"],
        fraction=fraction,
        prompt=size["prompt"],
        new=size["new"],
        n_layer=size["n_layer"],
        heads=size["heads"],
        repeats=repeats,
        device=device,
        dtype=dtype,
    )
    if peak:
        r["dense_mfu"] = r["dense_tok_s"] * r["decode_flops_per_token_dense"] / (peak * 1e12)
        r["routed_mfu"] = r["routed_tok_s"] * r["decode_flops_per_token_routed"] / (peak * 1e12)
    return r


def run(
    device: str = "cuda",
    size: str = "realistic",
    capacity: float = 0.125,
    fraction: float = 0.5,
    repeats: int = 5,
    peak: float | None = None,
    dtype: str = "auto",
) -> dict:
    dev = resolve_device(device)
    if size not in SIZES:
        raise ConfigError(f"--size must be one of {', '.join(SIZES)}, got '{size}'")
    torch_dtype = {
        "auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
        "bfloat16": torch.bfloat16,
        "float32": torch.float32,
    }[dtype]
    peak_value, peak_source = peak_tflops(dev, peak)
    s = SIZES[size]
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(torch_dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "peak_tflops": peak_value,
        "peak_source": peak_source,
        "training": bench_training(s, capacity, repeats, dev, torch_dtype, peak_value),
        "decoding": bench_decoding(s, fraction, repeats, dev, torch_dtype, peak_value),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m modlab.bench_gpu", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--size", default="realistic", choices=sorted(SIZES))
    p.add_argument("--capacity", type=float, default=0.125, help="training: top-k capacity of the routed layers")
    p.add_argument("--fraction", type=float, default=0.5, help="decoding: fraction of tokens the routers run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"), help="auto: bf16 on CUDA")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU")
    args = p.parse_args(argv)
    try:
        result = run(args.device, args.size, args.capacity, args.fraction, args.repeats, args.peak_tflops, args.dtype)
    except ConfigError as e:
        print(f"modlab: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
