"""The training FLOPs modlab reports for a Hugging Face unified model's step (modlab.routing.hf_flops
on the transformers model, as HFUnifiedModule.step_flops counts them) equal what torch's
FlopCounterMode counts for that step, dense and with UniMoD task routers (only image tokens
routed: text and special tokens run every layer). The image tokens are pre-tokenized, so no VQ
encoder runs in a step."""

from __future__ import annotations

import pytest
import torch
from helpers import save_tiny_hf_showo, save_tiny_hf_unified

from modlab.data.rows import collate_rows
from modlab.models.hf_unified.loader import load_hf_unified
from modlab.routing.hf_flops import train_step_flops
from modlab.routing.hf_routed_layer import install_hf_routing
from modlab.routing.trace import record_routing

pytest.importorskip("transformers")

FAMILIES = ["emu3", "chameleon", "janus", "showo"]


@pytest.fixture(scope="module", params=FAMILIES)
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / request.param
    if request.param == "showo":  # Show-o on Phi with its stand-in codebook
        return save_tiny_hf_showo(path)
    return save_tiny_hf_unified(path, request.param)


def image_of(model) -> dict:
    """The MMU image's pixels, for a family whose vision encoder reads them (Janus)."""
    if not model.mmu_reads_pixels:
        return {}
    from modlab.data.digits import load_digit_splits
    from modlab.data.vq_codec import digits_as_rgb

    return {"image": digits_as_rgb(load_digit_splits(0)["test"].images[:1], model.codec.resolution)[0]}


def mixed_batch(model):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, model.codec.n_codes, (3, model.codec.n_tokens), generator=g)
    rows = [
        model.t2i_row("a handwritten seven", codes[0]),
        model.t2i_row("a one", codes[1]),
        model.mmu_row(codes[2], "what digit is this?", "it is a two.", **image_of(model)),
        model.lm_row("some text to read, some text to model"),
    ]
    return collate_rows(rows, model.pad)


@pytest.mark.parametrize("routed", [False, True], ids=["dense", "unimod"])
def test_training_flops_equal_torchs_flop_counter(model_dir, routed):
    from torch.utils.flop_counter import FlopCounterMode

    model = load_hf_unified(str(model_dir))
    model.hf.set_attn_implementation("eager")  # every matmul visible to the counter (none for CPU SDPA)
    model.train()
    if routed:  # t2i / mmu / lm routers: image tokens at 0.5 and 0.25 in the last two layers, LM dense
        n = model.n_layer
        model.routing = install_hf_routing(model.hf, {n - 2: [0.5, 0.5, 1.0], n - 1: [0.25, 0.5, 1.0]})
    batch = mixed_batch(model)
    with FlopCounterMode(display=False) as counter, record_routing(model) as trace:
        losses = model.task_losses(model.training_batch(batch))
        sum(losses.values()).backward()
    B, T = batch["ids"].shape
    counted = counter.get_total_flops()
    extra = 3 * model.extra_forward_flops(batch)  # Janus: vision encoder, generation aligner and head
    reported = train_step_flops(model.hf, B, T, trace.flops_groups()[0] if routed else None) + extra
    assert reported == pytest.approx(counted, rel=0.01)
    if routed:
        assert reported < train_step_flops(model.hf, B, T) + extra
