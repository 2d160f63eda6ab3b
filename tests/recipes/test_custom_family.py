"""A model family defined here, in the test, and registered at run time: `modlab train`, `eval`
and `analyze importance` run on it through the real CLI entry point with no other change to
modlab (the registry is the only place that knows the families)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.data.tokens import IGNORE_INDEX
from modlab.families import FamilySpec, register_family, unregister_family
from modlab.families.model_family import AnalysisTarget, ModelFamily
from modlab.models.config import ModelConfig
from modlab.models.transformer import Block


class TinyByteLM(nn.Module):
    """Bytes -> two modlab Blocks -> bytes: the smallest model the analyses can read."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(256, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.head = nn.Linear(cfg.d_model, 256)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        B, T = ids.shape
        x = self.embed(ids)
        positions = torch.arange(T, device=ids.device).expand(B, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril().expand(B, 1, T, T)
        for block in self.blocks:
            x = x + block(x, positions, mask)
        return self.head(x)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


class TinyByteModule(L.LightningModule):
    def __init__(self, model: dict, data: dict):
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyByteLM(ModelConfig(**model))

    def training_step(self, batch, batch_idx):
        loss = next_token_loss(self.net(batch["ids"]), batch["labels"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", next_token_loss(self.net(batch["ids"]), batch["labels"]))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", next_token_loss(self.net(batch["ids"]), batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class TinyByteFamily(ModelFamily):
    name = "tiny_bytes"

    def build(self, run):
        from modlab.data.text_tokenizer import ByteTokenizer
        from modlab.training.text_datamodule import TextDataModule

        return TinyByteModule(asdict(run.model), asdict(run.data)), TextDataModule(run.data, run.eval, ByteTokenizer())

    def describe(self, module) -> dict:
        return {"params": sum(p.numel() for p in module.parameters())}

    def load(self, ckpt_path: str):
        ckpt = torch.load(ckpt_path, weights_only=True)
        module = TinyByteModule(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
        return module.eval()

    def evaluate(self, module, run, out_dir: Path) -> dict:
        from modlab.data.config import DataConfig
        from modlab.data.text_tokenizer import ByteTokenizer
        from modlab.training.text_datamodule import TextDataModule
        from modlab.training.trainer import test_module

        dm = TextDataModule(DataConfig(**module.hparams.data), run.eval, ByteTokenizer())
        return test_module(module, dm, run.trainer, run.logger, out_dir)

    def analysis_target(self, module, calibration, seed: int) -> AnalysisTarget:
        from modlab.analysis.calibration import calibration_batches
        from modlab.analysis.subject import Subject
        from modlab.data.config import DataConfig

        c, net = calibration, module.net
        batches = calibration_batches(DataConfig(**module.hparams.data), None, ["lm"], c.n_per_task, c.seed, c.split)
        subject = Subject(
            net,
            net.blocks,
            lambda b: net(b["ids"]),
            lambda b, g: {"lm": next_token_loss(net(b["ids"]), b["labels"])},
        )
        return AnalysisTarget(module, subject, batches)


@pytest.fixture
def tiny_bytes_family():
    register_family(
        FamilySpec("tiny_bytes", "a byte LM defined in a test", "lm", TinyByteFamily(), analyses=("importance",))
    )
    yield
    unregister_family("tiny_bytes")


def modlab(*args: str, out: Path) -> None:
    """The real entry point, in this process (so it sees the family registered here)."""
    from hydra.core.global_hydra import GlobalHydra

    from modlab.cli.main import main

    GlobalHydra.instance().clear()
    main([*args, f"hydra.run.dir={out}", "paths.output_dir=" + str(out.parent)])


def test_a_family_registered_at_run_time_trains_evaluates_and_is_analysed(tiny_bytes_family, tmp_path: Path):
    model = ("model.arch=tiny_bytes", "model.d_model=32", "model.n_layer=2", "model.n_head=2")
    modlab(
        "train",
        "objective=lm",
        "data=text",
        "data.lm_length=32",
        *model,
        "debug=fast",
        "callbacks.progress_bar=false",
        out=tmp_path / "train",
    )
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert trained["train/steps"] == 4 and trained["test/loss"] > 0 and trained["params"] > 0
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"

    modlab("eval", f"ckpt_path={ckpt}", "debug=fast", out=tmp_path / "eval")
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=0.2)

    modlab("analyze", "importance", f"ckpt_path={ckpt}", "calibration.n_per_task=4", out=tmp_path / "analyze")
    results = json.loads((tmp_path / "analyze" / "results.json").read_text())
    assert results["arch"] == "tiny_bytes" and results["calibration"]["tasks"] == ["lm"]
    assert {(r["layer"], r["sublayer"]) for r in results["results"]["llm_drop"]} == {
        (i, s) for i in range(2) for s in ("attn", "mlp", "block")
    }
    assert {r["dropped"] for r in results["results"]["drop_layer"]} == {-1, 0, 1}
    assert (tmp_path / "analyze" / "llm_drop.png").is_file()


def test_an_unregistered_family_is_a_one_line_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as e:
        modlab("train", "model.arch=tiny_bytes", "debug=fast", out=tmp_path / "x")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.arch 'tiny_bytes' is unknown" in err[0] and "showo" in err[0]
