"""The registry's contract, for every registered family (a family added to modlab.registry is
covered here with no change to this file): its conf/model YAML and an experiment exist; a Hugging
Face unified family's parts import, its tiny model builds and loads through its own entry, its
layers are where its layer-map entry says, capacity 1 equals the unrouted model, and its training
FLOPs equal torch's FlopCounterMode (about 10 s in all: 2-layer models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import modlab.conf
from modlab.registry import REGISTRY

CONF = Path(modlab.conf.__file__).parent
FAMILIES = sorted(REGISTRY)
UNIFIED = sorted(name for name, spec in REGISTRY.items() if spec.unified is not None)


def model_yamls() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in sorted((CONF / "model").glob("*.yaml")):
        found.setdefault((yaml.safe_load(f.read_text()) or {}).get("arch"), []).append(f.stem)
    return found


def experiments_of(model_files: list[str], arch: str) -> list[str]:
    """Experiments that pick one of these model configs (`override /model: <name>`) or set the arch."""
    found = []
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        text = f.read_text()
        if any(f"/model: {m}" in text for m in model_files) or f"arch: {arch}\n" in text:
            found.append(f.stem)
    return found


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_has_its_model_config_and_an_experiment(name):
    spec = REGISTRY[name]
    files = model_yamls().get(name)
    assert files, f"no conf/model/*.yaml sets arch: {name}"
    if spec.unified is not None:
        assert (CONF / "experiment" / f"{spec.unified.experiment}.yaml").is_file()
        assert spec.unified.experiment in experiments_of(files, name)
    else:
        assert experiments_of(files, name) or name in {"showo", "lm"}, f"no experiment trains {name}"


@pytest.mark.parametrize("name", UNIFIED)
def test_every_unified_familys_parts_import(name):
    from modlab.data.vq_codec import ImageCodec
    from modlab.hf_layer_map import HF_FAMILIES
    from modlab.models.hf_unified.base import HFUnifiedModel

    u = REGISTRY[name].unified
    assert issubclass(u.part("model"), HFUnifiedModel)
    assert issubclass(u.part("codec"), ImageCodec)
    assert callable(u.part("tiny")) and callable(u.part("loader"))
    assert u.layers in HF_FAMILIES and u.model_types
    owners = [n for n in UNIFIED if set(REGISTRY[n].unified.model_types) & set(u.model_types)]
    assert owners == [name], "two registered families load the same model_type"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            from modlab.models.hf_unified.loader import load_hf_unified

            path = REGISTRY[name].unified.part("tiny")(tmp_path_factory.mktemp(name) / "model", n_layer=2)
            built[name] = load_hf_unified(str(path), arch=name)
        return built[name]

    return get


def a_batch(model):
    from modlab.data.rows import collate_rows

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, model.codec.n_codes, (2, model.codec.n_tokens), generator=g)
    image = {}
    if model.mmu_reads_pixels:
        image = {"image": torch.zeros(model.codec.resolution, model.codec.resolution, 3, dtype=torch.uint8).numpy()}
    rows = [
        model.t2i_row("a handwritten seven", codes[0]),
        model.mmu_row(codes[1], "what digit is this?", "it is a two.", **image),
        model.lm_row("some text to read"),
    ]
    return collate_rows(rows, model.pad)


@pytest.mark.parametrize("name", UNIFIED)
def test_every_unified_family_builds_and_capacity_one_equals_unrouted(name, tiny_models):
    from modlab.hf_layer_map import HF_FAMILIES
    from modlab.models.hf_unified.base import HFUnifiedModel
    from modlab.routing.hf_routed_layer import install_hf_routing, unrouted

    pytest.importorskip("transformers")
    model = tiny_models(name)
    u = REGISTRY[name].unified
    assert isinstance(model, u.part("model")) and isinstance(model, HFUnifiedModel)
    assert model.family is HF_FAMILIES[u.layers] and len(model.decoder_layers()) == 2
    batch = a_batch(model)
    b = batch
    with torch.no_grad():
        dense = model(b["ids"], b["is_image"], b["valid"], b["task"], b["kind"], **_pixels(b))
        model.routing = install_hf_routing(model.hf, {1: [1.0, 1.0, 1.0]})
        try:
            routed = model(b["ids"], b["is_image"], b["valid"], b["task"], b["kind"], **_pixels(b))
            with unrouted(model.routing):
                again = model(b["ids"], b["is_image"], b["valid"], b["task"], b["kind"], **_pixels(b))
        finally:
            with torch.no_grad():
                for i, layer in model.routing.layers.items():
                    model.decoder_layers()[i] = layer.block
            model.routing = None
    real = b["valid"] & model.real_tokens(b["ids"])  # padding is never a token a routed layer runs
    torch.testing.assert_close(routed[real], dense[real])
    torch.testing.assert_close(again[real], dense[real])


@pytest.mark.parametrize("name", UNIFIED)
def test_every_unified_familys_flops_equal_torchs_counter(name, tiny_models):
    from torch.utils.flop_counter import FlopCounterMode

    from modlab.routing.hf_flops import train_step_flops

    model = tiny_models(name)
    model.hf.set_attn_implementation("eager")  # every matmul visible to the counter
    batch = a_batch(model)
    with FlopCounterMode(display=False) as counter:
        losses = model.task_losses(model.training_batch(batch))
        sum(losses.values()).backward()
    B, T = batch["ids"].shape
    reported = train_step_flops(model.hf, B, T) + 3 * model.extra_forward_flops(batch)
    assert reported == pytest.approx(counter.get_total_flops(), rel=0.01)


def _pixels(batch: dict) -> dict:
    return {"pixels": batch["pixels"]} if "pixels" in batch else {}
