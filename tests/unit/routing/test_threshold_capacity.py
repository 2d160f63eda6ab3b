"""Defect 2 (issue 12): threshold (decoding) routing must respect capacity.

A task whose capacity in a layer is 1.0 ran every token there under top-k, so it must run every
token under threshold routing too; `router_agreement` counts routed tokens only; the test
metrics report the threshold-mode kept fraction per task and layer beside the target."""

from __future__ import annotations

import math

import lightning as L
import torch
from helpers import traced

from modlab.data.config import DataConfig
from modlab.data.rows import collate_rows, t2i_row
from modlab.data.tokens import TASK_ID, TokenSpace
from modlab.models.config import ModelConfig
from modlab.models.emu3 import Emu3
from modlab.routing.config import RoutingConfig
from modlab.routing.install import RouteInfo, install_routing, routed_blocks, threshold_routing
from modlab.routing.routed_block import RoutedBlock
from modlab.routing.trace import record_routing
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.digits_datamodule import DigitsDataModule
from modlab.training.unified import UnifiedModule

CFG = ModelConfig(arch="emu3", d_model=32, n_layer=4, n_head=2)
SP = TokenSpace(17)


def spread_routers(model) -> None:
    """Decision logits well spread around 0, so an untrained router keeps about half the tokens."""
    for b in routed_blocks(model):
        torch.nn.init.normal_(b.router.proj.weight, std=1.0)


def t2i_rows():
    rows = [t2i_row(SP, c, torch.randint(0, 17, (16,)), 16, d) for c, d in (("a 1", 1), ("a seven", 7), ("4", 4))]
    return collate_rows(rows, SP.pad)


def test_a_dense_task_runs_every_token_of_its_dense_layers_under_threshold_routing():
    """Emu3-like UniMoD with T2I routed only in layer 3 (capacity 0.3), MMU routed in 2 and 3:
    layer 2 is dense for T2I, so threshold routing must run all T2I tokens there (the old code
    routed them by logit > 0 and kept about half)."""
    torch.manual_seed(0)
    model = Emu3(CFG, SP, 16).eval()
    # one capacity per task id (t2i, mmu, lm)
    install_routing(
        model.transformer.blocks, CFG.d_model, {2: [1.0, 0.3, 1.0], 3: [0.3, 0.3, 1.0]}, "ste_sigmoid", "aux_bce"
    )
    spread_routers(model)
    batch = t2i_rows()
    with threshold_routing(model), record_routing(model) as trace:
        model(batch["ids"], batch["is_image"], batch["valid"], batch["task"])
    (layer2,), (layer3,) = trace.layer(2), trace.layer(3)
    assert torch.equal(layer2.selected, batch["valid"])  # dense for T2I: every token runs
    ran3 = layer3.selected.sum() / batch["valid"].sum()
    assert 0.0 < ran3 < 1.0  # routed for T2I: the decision really chooses
    kept = {(r["layer"], r["task"]): r for r in trace.kept_fractions("threshold", routed_only=False)}
    assert kept[(2, TASK_ID["t2i"])]["kept"] == 1.0 and kept[(2, TASK_ID["t2i"])]["capacity"] == 1.0
    t2i3 = kept[(3, TASK_ID["t2i"])]
    assert math.isclose(t2i3["kept"], float(ran3), rel_tol=1e-6) and math.isclose(t2i3["capacity"], 0.3, rel_tol=1e-6)


def test_router_agreement_counts_routed_tokens_only():
    """Rows of task 0 are dense in this layer (capacity 1), rows of task 1 are routed at 0.25.
    The agreement of the causal decision with top-k is measured over task 1's tokens alone."""
    torch.manual_seed(0)
    d = CFG.d_model
    from modlab.models.transformer import Block

    rb = RoutedBlock(Block(CFG), d, [1.0, 0.25], causal="aux_bce")
    torch.nn.init.normal_(rb.router.proj.weight, std=1.0)
    B, T = 6, 20
    x = torch.randn(B, T, d)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 15:] = False
    task = torch.tensor([0, 0, 0, 1, 1, 1])
    positions = torch.arange(T).expand(B, T)
    mask = torch.ones(B, 1, T, T, dtype=torch.bool).tril()
    _, r = traced(rb, x, positions, mask, RouteInfo(task=task, valid=valid))
    logits = rb.router(x, task).detach()
    routed = valid & (task == 1)[:, None]
    agree = (logits > 0) == r.selected
    expected = agree[routed].float().mean()
    inflated = agree[valid].float().mean()  # what the old code reported
    assert not math.isclose(float(expected), float(inflated), abs_tol=1e-3)
    torch.testing.assert_close(r.agreement, expected)
    # a batch with only dense rows has no routed token: no agreement, and a zero causal loss
    _, r = traced(rb, x[:3], positions[:3], mask[:3], RouteInfo(task=task[:3], valid=valid[:3]))
    assert r.agreement is None and float(r.aux_loss.detach()) == 0.0


def test_test_metrics_report_the_threshold_kept_fraction_beside_the_capacity():
    """A tiny Emu3-like UniMoD model (MMU routed in layers 2-3, T2I in layer 3) through the real
    Lightning test loop: test/kept and test/capacity per routed (task, layer), the dense tasks at
    1.0, and test/lm_ppl computed with causal routing."""
    L.seed_everything(0, verbose=False)
    model = ModelConfig(arch="emu3", d_model=32, n_layer=4, n_head=2)
    data = DataConfig(batch_size={"t2i": 4, "mmu": 4, "lm": 2}, eval_batch_size=16)
    ev = EvalConfig(t2i_per_digit=1, max_answer_tokens=3, mmu_max_rows=6, lm_max_rows=4, ref_classifier_epochs=1)
    routing = RoutingConfig(
        kind="unimod", task_layers={"t2i": [3], "mmu": [2, 3]}, task_capacity={"t2i": [0.3], "mmu": [0.25]}
    )
    module = UnifiedModule.from_configs(model, data, ObjectiveConfig(), ev, routing)
    spread_routers(module.model)
    dm = DigitsDataModule(data, ev)
    module.image_tokenizer = dm.image_tokenizer
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    results = trainer.test(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for r in results for k, v in r.items()}
    for task, layers, cap in (("mmu", (2, 3), 0.25), ("t2i", (3,), 0.3), ("lm", (), None)):
        for i in layers:
            assert math.isclose(metrics[f"test/capacity/{task}/layer{i}"], cap, rel_tol=1e-6)
            assert 0.0 <= metrics[f"test/kept/{task}/layer{i}"] <= 1.0
    # layer 2 is dense for T2I and LM is dense everywhere: every token ran
    assert metrics["test/kept_dense_min/t2i"] == 1.0 and metrics["test/kept_dense_min/lm"] == 1.0
    assert "test/kept/lm/layer2" not in metrics and "test/kept/t2i/layer2" not in metrics
    assert metrics["test/lm_ppl_causal"] == 1.0
    # test/lm_ppl is the perplexity under threshold routing, here recomputed by hand
    lm = collate_rows([dm.test_dataloader()[2].dataset[i] for i in range(4)], SP.pad)
    with torch.no_grad(), threshold_routing(module.model):
        logits = module.model(lm["ids"], lm["is_image"], lm["valid"], lm["task"])
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), lm["labels"].flatten(), ignore_index=-100)
    assert math.isclose(metrics["test/lm_ppl"], math.exp(float(nll)), rel_tol=1e-4)


def test_compare_keeps_the_kept_fractions_out_of_the_compared_metrics(tmp_path):
    """The per-layer kept fractions describe routing: `modlab compare` keeps them in each run's
    row but does not make a column and a Pareto plot of each."""
    import json

    from modlab.analysis.compare import comparison_rows

    m = {"test/mmu_acc": 0.5, "test/kept/mmu/layer2": 0.3, "test/capacity/mmu/layer2": 0.25}
    m |= {"test/kept_dense_min/lm": 1.0, "test/lm_ppl": 3.0, "test/lm_ppl_causal": 1.0}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(m))
    rows, metrics = comparison_rows([str(tmp_path)])
    assert metrics == ["test/lm_ppl", "test/mmu_acc"] and rows[0]["test/kept/mmu/layer2"] == 0.3


def test_layers_without_routed_tokens_do_not_dilute_the_causal_loss():
    """UniMoD layer 1 routes task 1 only, layer 2 both tasks: on rows of task 0 the causal loss and
    agreement are layer 2's alone (layer 1's dense rows contribute a graph-keeping zero)."""
    from modlab.models.omni_attention import causal_mask
    from modlab.models.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=32, n_layer=3, n_head=2), vocab_size=40)
    install_routing(model.blocks, 32, {1: [1.0, 0.25], 2: [0.5, 0.25]}, "ste_sigmoid", "aux_bce")
    ids = torch.randint(0, 40, (3, 10))
    valid = torch.ones(3, 10, dtype=torch.bool)
    with record_routing(model) as trace:
        model(ids, causal_mask(valid), route=RouteInfo(task=torch.zeros(3, dtype=torch.long), valid=valid))
    aux, agreement = trace.causal_stats()
    layer1, layer2 = model.blocks[1], model.blocks[2]
    (record1,), (record2,) = trace.layer(1), trace.layer(2)
    assert record1.agreement is None and float(record1.aux_loss.detach()) == 0.0
    torch.testing.assert_close(aux, record2.aux_loss)
    torch.testing.assert_close(agreement, record2.agreement)
    aux.backward()  # the zero keeps layer 1's router in the graph (gradient 0, not None)
    assert layer1.router.proj.weight.grad is not None and layer2.router.proj.weight.grad.abs().sum() > 0
