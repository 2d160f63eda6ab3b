"""Every unified model, native or Hugging Face, offers what UnifiedModelProtocol states (the
sampling and evaluation code calls those methods alone and never asks which kind it holds)."""

import inspect

import pytest

from modlab.models.emu3 import Emu3
from modlab.models.hf_unified.base import HFUnifiedModel
from modlab.models.hf_unified.hf_chameleon import HFChameleon
from modlab.models.hf_unified.hf_emu3 import HFEmu3
from modlab.models.hf_unified.hf_janus import HFJanus
from modlab.models.hf_unified.hf_showo import HFShowo
from modlab.models.showo import ShowO
from modlab.models.unified_protocol import UnifiedModelProtocol

MEMBERS = [
    name for name, value in vars(UnifiedModelProtocol).items() if inspect.isfunction(value) and not name.startswith("_")
]


def test_the_protocol_names_what_sampling_and_evaluation_use():
    assert set(MEMBERS) == {
        "training_batch",
        "task_losses",
        "t2i_prompts",
        "mmu_prompts",
        "answer",
        "sample_images",
        "decode_images",
    }


@pytest.mark.parametrize("cls", [ShowO, Emu3, HFUnifiedModel, HFEmu3, HFChameleon, HFJanus, HFShowo])
def test_every_unified_model_class_offers_the_protocol(cls):
    missing = [m for m in MEMBERS if not callable(getattr(cls, m, None))]
    assert not missing, f"{cls.__name__} lacks {missing}"
    assert isinstance(cls.image_vmax, float)
