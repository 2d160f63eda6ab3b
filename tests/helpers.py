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
# every supported Hugging Face family (modlab.models.hf_families): MindSkip and token routing apply to all
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


# config values some families need beyond the common tiny sizes (Qwen3 / Gemma size heads by head_dim)
HF_EXTRA = {
    "qwen3": {"head_dim": 8},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8},
    "gemma3_text": {"head_dim": 8},
    "phi3": {"pad_token_id": 0},
}


def save_tiny_hf(path: Path, family: str = "llama", n_layer: int = 4, seed: int = 0) -> Path:
    """A tiny random Hugging Face causal LM of any family in modlab.models.hf_families, saved with
    save_pretrained (byte-level text needs a vocabulary of at least 256)."""
    import transformers as T
    from transformers.utils import logging

    from modlab.models.hf_families import HF_FAMILIES as ENTRIES

    logging.disable_progress_bar()
    entry = ENTRIES[family]
    cfg = getattr(T, entry.config_class)(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **HF_EXTRA.get(family, {}),
    )
    torch.manual_seed(seed)
    getattr(T, entry.causal_lm_class)(cfg).save_pretrained(path)
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
    """A tiny random Hugging Face unified model with its processor (offline byte-level tokenizer,
    tiny VQ model: 32x32 images, an 8x8 code grid), saved with save_pretrained."""
    from transformers.utils import logging

    from modlab.models.hf_tiny import tiny_unified

    logging.disable_progress_bar()
    model, processor = tiny_unified(family, n_codes=n_codes, n_layer=n_layer, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_hf_showo(
    path: Path, n_codes: int = 32, n_layer: int = 4, seed: int = 0, max_text_len: int = 32, released: bool = False
) -> Path:
    """A tiny random Show-o on Phi (modlab.models.hf_showo_unified's directory): a byte-level
    tokenizer (<|endoftext|> = <|sot|> = <|eot|>), Show-o's vocabulary around it, and the stand-in
    image codebook fitted on the training digits at 32x32 (4x4 patches: an 8x8 code grid).
    `released`: the weights in Show-o's released layout (pytorch_model.bin, `showo.`-prefixed
    keys) beside Phi's own config (its vocabulary not yet resized), as Show-o's checkpoint ships."""
    import json

    from transformers import PhiConfig
    from transformers.utils import logging

    from modlab.models.hf_showo import build_showo_phi
    from modlab.models.hf_showo_unified import fit_digit_codebook, save_showo_directory
    from modlab.models.hf_tiny import byte_level_tokenizer

    logging.disable_progress_bar()
    tok = byte_level_tokenizer([], bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eot = tok.eos_token_id
    config = PhiConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        max_position_embeddings=512,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    torch.manual_seed(seed)
    model, vocab = build_showo_phi(config, n_codes, len(tok))
    save_showo_directory(path, model, vocab, tok, fit_digit_codebook(32, n_codes, 4, seed=seed), max_text_len)
    if released:
        (path / "model.safetensors").unlink()
        torch.save({"showo." + k: v for k, v in model.state_dict().items()}, path / "pytorch_model.bin")
        (path / "config.json").write_text(json.dumps(config.to_dict()))
    return path
