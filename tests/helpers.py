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
HF_FAMILIES = ("llama", "mistral", "qwen2")


def _routing_cfg():
    from modlab.models.config import ModelConfig

    return ModelConfig(d_model=32, n_layer=4, n_head=2)


ROUTING_CFG = _routing_cfg()  # the tiny model the routed-block tests use


def run_modlab(*args: str, out_dir: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `modlab` console script with run directories under `out_dir`."""
    full_env = {**os.environ, "MODLAB_OUTPUT_DIR": str(out_dir), "COLUMNS": "120", **(env or {})}
    full_env.pop("MODLAB_DEBUG", None)
    return subprocess.run([MODLAB, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


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


def save_tiny_hf(path: Path, family: str = "llama", n_layer: int = 4, seed: int = 0) -> Path:
    """A tiny random Hugging Face causal LM, saved with save_pretrained (byte-level text needs a
    vocabulary of at least 256)."""
    import transformers as T
    from transformers.utils import logging

    logging.disable_progress_bar()
    config_cls, model_cls = {
        "llama": (T.LlamaConfig, T.LlamaForCausalLM),
        "mistral": (T.MistralConfig, T.MistralForCausalLM),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
    }[family]
    cfg = config_cls(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model_cls(cfg).save_pretrained(path)
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
