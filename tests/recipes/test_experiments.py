"""Every experiment config composes, validates and trains for a few steps (in-process, as in
lightning-hydra-template), with the debug profile winning over the experiment's own budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY, composed, save_tiny_hf, save_tiny_hf_showo, save_tiny_hf_unified

from modlab.cli.app import CONF_DIR
from modlab.cli.schema import validate

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def test_there_are_experiments():
    assert "showo_dense" in EXPERIMENTS


# experiments on a Hugging Face model directory (model.path=DIR): a tiny random one of the kind
# they load (hf_mod: a causal LM; hf_<family>_*: that unified family, e.g. hf_emu3_unimod)
def hf_kind(name: str) -> str | None:
    if name in ("hf_mod", "hf_router_tuning"):  # causal LMs
        return "llama"
    return name.split("_")[1] if name.startswith("hf_") else None


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    made: dict[str, Path] = {}

    def dir_of(kind: str) -> Path:
        if kind not in made:
            path = tmp_path_factory.mktemp("hf") / kind
            if kind == "llama":
                made[kind] = save_tiny_hf(path)
            elif kind == "showo":  # Show-o on Phi, with its stand-in codebook
                made[kind] = save_tiny_hf_showo(path)
            else:
                made[kind] = save_tiny_hf_unified(path, kind)
        return made[kind]

    return dir_of


def hf_args(name: str, request) -> list[str]:
    kind = hf_kind(name)
    return [f"model.path={request.getfixturevalue('hf_dirs')(kind)}"] if kind else []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_validates_and_debug_profile_wins(name, tmp_path, request):
    c = validate(composed("train", [f"+experiment={name}", "debug=fast", *hf_args(name, request)], tmp_path))
    assert c.experiment_name == name
    assert c.trainer.max_steps == 4  # debug=fast, although the experiment sets its own budget


# experiments that fine-tune a pretrained LM: the extra overrides they need (debug=tiny has 4 layers)
NEEDS_LM_BASE = {"lm_router_tuning": ["mindskip.n_routed=2"]}
# ... and those sized for a real model's depth
TINY_DEPTH = {"hf_router_tuning": ["mindskip.n_routed=2"]}


@pytest.fixture(scope="module")
def lm_base(tmp_path_factory) -> Path:
    """A tiny pretrained LM checkpoint (lm_pretrain for a few steps) to fine-tune from."""
    from modlab.cli.train import train

    out = tmp_path_factory.mktemp("lm_base")
    train(composed("train", ["+experiment=lm_pretrain", *TINY], out))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_a_few_steps(name, tmp_path, request):
    from modlab.cli.train import train

    extra = [f"init_from={request.getfixturevalue('lm_base')}", *NEEDS_LM_BASE[name]] if name in NEEDS_LM_BASE else []
    extra += hf_args(name, request) + TINY_DEPTH.get(name, [])
    metrics = train(composed("train", [f"+experiment={name}", *TINY, *extra], tmp_path))
    assert metrics["train/steps"] == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["params"] == metrics["params"]
