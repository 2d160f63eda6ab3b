"""What the test tiers share: running the real `modlab` command, finding its run directory,
checking one-line errors, composing configs in-process, and tiny models saved to disk (a Hugging
Face LM built from a config object, a briefly trained unified checkpoint). Nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODLAB = str(Path(sys.executable).parent / "modlab")
# the tiny debug profile (conf/debug/tiny.yaml): 4 layers, d = 32, a few steps of everything
TINY = ("debug=tiny",)
# every supported Hugging Face family (modlab.hf_layer_map): MindSkip and token routing apply to all
HF_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3")


# what metrics.json holds for every routed run (modlab.routing.trace.RouterState, docs/routing.md)
ROUTER_STATE_KEYS = {
    f"{split}/router_{k}"
    for split in ("train", "val")
    for k in ("logit_abs_median", "weight_grad_median", "weight_grad_small", "recall", "decision_kept")
}


def _routing_cfg():
    from modlab.models.config import ModelConfig

    return ModelConfig(d_model=32, n_layer=4, n_head=2)


ROUTING_CFG = _routing_cfg()  # the tiny model the routed-block tests use


def run_modlab(*args: str, out_dir: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `modlab` console script with run directories under `out_dir`."""
    full_env = {**os.environ, "MODLAB_OUTPUT_DIR": str(out_dir), "COLUMNS": "120", **(env or {})}
    full_env.pop("MODLAB_DEBUG", None)
    return subprocess.run([MODLAB, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def hiding_modules(directory: Path, *modules: str) -> dict:
    """Environment for run_modlab in which `modules` look uninstalled (find_spec finds nothing,
    import fails): a sitecustomize.py on PYTHONPATH puts None into sys.modules for each, as for a
    user without that optional extra."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    )
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)}


def only_run_dir(root: Path) -> Path:
    """The single run directory (the one holding .hydra/) under root."""
    dirs = sorted(p.parent for p in root.rglob(".hydra"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one `modlab: error: ...` line on stderr naming each needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modlab: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def composed(config_name: str, overrides: list[str], out_dir: Path):
    """A command's composed config as `modlab <command>` would run it, with its run directory at
    `out_dir` (in-process, as lightning-hydra-template's tests do)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from modlab.cli.app import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def save_tiny_hf(path: Path, family: str = "llama", n_layer: int = 4, seed: int = 0, vocab_size: int = 260) -> Path:
    """A tiny random Hugging Face causal LM of any family in modlab.hf_layer_map
    (modlab.models.hf_tiny's sizes), saved with save_pretrained (byte-level text without a
    tokenizer needs a vocabulary of 256 to 512)."""
    from transformers.utils import logging

    from modlab.models.hf_tiny import tiny_causal_lm

    logging.disable_progress_bar()
    tiny_causal_lm(family, seed, num_hidden_layers=n_layer, vocab_size=vocab_size).save_pretrained(path)
    return path


def save_tiny_unified(path: Path, arch: str = "showo") -> Path:
    """A tiny unified model (Show-o-like or Emu3-like) trained for a few steps, saved as a modlab checkpoint."""
    from modlab.analysis.interactions import RowSampler, train_steps
    from modlab.data.config import DataConfig
    from modlab.models.config import ModelConfig
    from modlab.training.config import EvalConfig, ObjectiveConfig
    from modlab.training.digits_datamodule import DigitsDataModule
    from modlab.training.unified import UnifiedModule

    torch.manual_seed(0)
    module = UnifiedModule.from_configs(
        ModelConfig(arch=arch, d_model=32, n_head=2, n_layer=4), DataConfig(), ObjectiveConfig(), EvalConfig()
    )
    dm = DigitsDataModule(module.data_cfg, module.eval_cfg)
    module.image_tokenizer = dm.image_tokenizer
    samplers = {t: RowSampler(ds, 8, dm.space.pad, i) for i, (t, ds) in enumerate(dm._task_sets("train").items())}
    model = module.model

    def loss() -> torch.Tensor:
        return sum(v for t, s in samplers.items() for v in model.task_losses(model.training_batch(s(), 0.1)).values())

    train_steps(model, loss, steps=5, lr=3e-3)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def routed_block_inputs(B=4, T=12, n_tasks=2, seed=0):
    """(x, positions, omni-attention mask, RouteInfo) for a routed block of ROUTING_CFG's width:
    rows of different lengths (padding), an image span, alternating task ids."""
    from modlab.models.omni_attention import omni_attention_mask
    from modlab.routing.install import RouteInfo

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, ROUTING_CFG.d_model, generator=g)
    lengths = torch.tensor([T, T - 3, T - 5, 4][:B])
    valid = torch.arange(T)[None] < lengths[:, None]
    is_image = torch.zeros(B, T, dtype=torch.bool)
    is_image[:, 3:7] = True
    is_image &= valid
    task = torch.arange(B) % n_tasks
    positions = torch.arange(T).expand(B, T)
    return x, positions, omni_attention_mask(is_image, valid), RouteInfo(task=task, valid=valid)


def traced(module, *args, **kwargs):
    """(module(*args, **kwargs), the routing record of its last routed call) (modlab.routing.trace)."""
    from modlab.routing.trace import record_routing

    with record_routing(module) as trace:
        out = module(*args, **kwargs)
    return out, trace.last()


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def save_tiny_tokenizer(path: Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A byte-level BPE tokenizer with no merges (256 byte tokens, then <pad> and <eos>: 258 ids,
    within save_tiny_hf's vocabulary), saved into `path` (e.g. a model directory), with a chat
    template unless None. Built from nothing; nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=258, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["a"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


def write_alpaca(path: Path, n: int = 40, drop: tuple[int, str] | None = None) -> Path:
    """An Alpaca-format JSONL file of n records (every other one with an input); `drop`
    (record index, field) leaves that field out of that record (line index + 1)."""
    import json

    lines = []
    for i in range(n):
        rec = {"instruction": f"Write the number {i} in words.", "input": "" if i % 2 else f"n = {i}"}
        rec["output"] = f"The number is {i}."
        if drop is not None and drop[0] == i:
            rec.pop(drop[1])
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mc_task(directory: Path, name: str = "tiny_mc", n: int = 8) -> Path:
    """A local lm-eval multiple-choice task: JSONL documents and the task YAML that reads them with
    the `json` builder (nothing is downloaded). Returns the directory (harness.include_path)."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    docs = [
        {"question": f"What is {i} plus 1?", "choices": [str(i + 1), f"{i} and more", "no"], "label": i % 2}
        for i in range(n)
    ]
    (directory / f"{name}.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / (name + '.jsonl')}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return directory


def save_tiny_hf_unified(path: Path, family: str = "emu3", n_codes: int = 32, n_layer: int = 4, seed: int = 0) -> Path:
    """A tiny random Hugging Face unified model of the registered family that loads `family`
    directories (a transformers model_type: emu3, chameleon, janus), by that family's own tiny
    builder (modlab.registry: UnifiedSpec.tiny)."""
    from modlab.registry import unified_family

    return unified_family(family).unified.part("tiny")(path, n_codes=n_codes, n_layer=n_layer, seed=seed)


def save_tiny_hf_showo(
    path: Path, n_codes: int = 32, n_layer: int = 4, seed: int = 0, max_text_len: int = 32, released: bool = False
) -> Path:
    """A tiny random Show-o on Phi (modlab.models.hf_tiny.save_tiny_showo, the hf_showo family's tiny builder)."""
    from modlab.models.hf_tiny import save_tiny_showo

    return save_tiny_showo(path, n_codes, n_layer, seed, max_text_len, released)


def save_tiny_bos_tokenizer(path: Path, bos: bool = True) -> Path:
    """A byte-level tokenizer (256 byte tokens, then <bos> = 256 and <eos> = 257) saved into a tiny
    model's directory; `bos`: it puts <bos> before every text, as Gemma's and Llama's do (Qwen2's
    does not). Fits the vocabulary of save_tiny_hf's models (260)."""
    from tokenizers import processors

    from modlab.models.hf_tiny import byte_level_tokenizer

    tok = byte_level_tokenizer([], bos_token="<bos>", eos_token="<eos>")
    if bos:
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
        )
    tok.save_pretrained(path)
    return path


def reference_perplexity(hf_model, tokenizer, windows: list[list[int]]) -> float:
    """transformers' own perplexity (the outside reference for modlab's): each window of text
    tokens with the special token its tokenizer puts before a text (<bos> where `tokenizer("x")`
    starts with it), the loss computed by the model itself from `labels=`, weighted by tokens."""
    import math

    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("x")["input_ids"][0] == bos
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([([bos] if adds_bos else []) + list(w)])
            loss = hf_model(input_ids=ids, labels=ids).loss  # mean over ids.shape[1] - 1 predictions
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def text_windows(dm) -> list[list[int]]:
    """The text tokens of each test row of a TextDataModule (its special prefix removed)."""
    out = []
    for batch in dm.test_dataloader():
        for ids, valid in zip(batch["ids"], batch["valid"]):
            out.append(ids[valid][len(dm.prefix) :].tolist())
    return out


def write_tiny_gguf(path: Path, arch: str = "llama", n_layer: int = 2, seed: int = 0) -> Path:
    """A tiny random GGUF file (float32 tensors, llama.cpp's tensor names) with a byte-level
    tokenizer of 256 byte tokens and <eos>, written with the gguf package. `arch` other than llama
    writes the same tensors under another architecture's name (for the errors)."""
    import numpy as np
    from gguf import GGUFWriter
    from tokenizers import pre_tokenizers

    d, n_head, n_kv, ff = 32, 4, 2, 64
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<eos>"]
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3])
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_merges([])
    w.add_eos_token_id(256)
    w.add_bos_token_id(256)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    tensor("token_embd.weight", len(tokens), d)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        tensor(f"blk.{i}.attn_q.weight", d, d)
        tensor(f"blk.{i}.attn_k.weight", n_kv * d // n_head, d)
        tensor(f"blk.{i}.attn_v.weight", n_kv * d // n_head, d)
        tensor(f"blk.{i}.attn_output.weight", d, d)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", ff, d)
        tensor(f"blk.{i}.ffn_up.weight", ff, d)
        tensor(f"blk.{i}.ffn_down.weight", d, ff)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    tensor("output.weight", len(tokens), d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def real_lm_dir() -> Path | None:
    """The real model's directory (`make real-lm`: Gemma 3 270M in $MODLAB_CACHE), or None until
    it is made (its marker file is written last)."""
    from modlab.real_lm import MARKER
    from modlab.real_lm import real_lm_dir as made_at

    directory = made_at()
    return directory if (directory / MARKER).is_file() else None
