"""A Hugging Face unified family defined here, in the test, and registered at run time: its model
class (a model file's worth: here a subclass of Emu3's), one registry entry (its UnifiedSpec: model
class, model types, codec, layers, tiny builder, default experiment) and its model settings on the
command line (what its conf/model YAML would hold). `modlab train`, `eval` and `analyze` then run
on it through the real CLI entry point with no other change to modlab: nothing outside the
registry knows the unified families by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modlab.families import UnifiedSpec, hf_unified_spec, register_family, unregister_family
from modlab.models.hf_unified.hf_emu3 import HFEmu3

pytest.importorskip("transformers")

NAME = "tiny_unified"


class CaptionedEmu3(HFEmu3):
    """Emu3 whose LM rows open with a caption-like prefix: a family with rows of its own."""

    built = 0  # how many were built: the loader really used this class

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        type(self).built += 1

    def lm_row(self, text: str) -> dict:
        return super().lm_row("text: " + text)


@pytest.fixture
def unified_family():
    spec = register_family(
        hf_unified_spec(
            NAME,
            "a unified family defined in a test",
            UnifiedSpec(
                model=f"{__name__}:CaptionedEmu3",
                model_types=("emu3",),
                codec="modlab.data.vq_codec:Emu3Codec",
                layers="emu3",
                tiny="modlab.models.hf_tiny:save_tiny_emu3",
                experiment="hf_emu3_unimod",
            ),
            analyses=("importance",),
        )
    )
    yield spec
    unregister_family(NAME)


def modlab(*args: str, out: Path) -> None:
    """The real entry point, in this process (so it sees the family registered here)."""
    from hydra.core.global_hydra import GlobalHydra

    from modlab.cli.main import main

    GlobalHydra.instance().clear()
    main([*args, f"hydra.run.dir={out}", "paths.output_dir=" + str(out.parent)])


def test_a_unified_family_registered_at_run_time_trains_evaluates_and_is_analysed(unified_family, tmp_path):
    model_dir = unified_family.unified.part("tiny")(tmp_path / "model", n_layer=2)
    before = CaptionedEmu3.built
    modlab(
        "train",
        f"+experiment={unified_family.unified.experiment}",
        f"model.arch={NAME}",
        f"model.path={model_dir}",
        "debug=fast",
        "callbacks.progress_bar=false",
        f"data.image_cache={tmp_path / 'cache'}",
        "data.batch_size={t2i: 2, mmu: 2, lm: 1}",
        out=tmp_path / "train",
    )
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert trained["train/steps"] == 4 and trained["test/lm_ppl"] > 0
    assert CaptionedEmu3.built > before
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"

    built = CaptionedEmu3.built
    modlab("eval", f"ckpt_path={ckpt}", "debug=fast", out=tmp_path / "eval")
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test/lm_ppl"] == pytest.approx(trained["test/lm_ppl"], rel=0.2)
    assert CaptionedEmu3.built > built  # the checkpoint was rebuilt through the family's model class

    modlab("analyze", "importance", f"ckpt_path={ckpt}", "calibration.n_per_task=2", out=tmp_path / "analyze")
    results = json.loads((tmp_path / "analyze" / "results.json").read_text())
    assert results["arch"] == NAME and set(results["calibration"]["tasks"]) == {"t2i", "mmu", "lm"}
    assert {r["dropped"] for r in results["results"]["drop_layer"]} == {-1, 0, 1}
