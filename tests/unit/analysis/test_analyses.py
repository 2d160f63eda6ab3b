"""Analyses with known answers: ARank of constructed low-rank scores, attention fractions of
hand-built maps, LLM-Drop of a silent sublayer, drop-one-layer restoring the model, the plan
derived from an ARank table, packed rows for the joint router budget, and Pareto fronts."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from modlab.analysis.arank import arank_analysis, head_ranks, numerical_rank
from modlab.analysis.attention_stats import attention_analysis, image_mass
from modlab.analysis.config import CalibrationConfig, PlanConfig
from modlab.analysis.importance import drop_layer_importance, llm_drop_importance, skip_layer
from modlab.analysis.interactions import kept_fractions, pack_rows, packed_logits
from modlab.analysis.plan_from_arank import plan_from_arank
from modlab.analysis.plots import pareto_front
from modlab.analysis.subject import showo_subject
from modlab.data.config import DataConfig
from modlab.data.rows import collate_rows, lm_row, mmu_row, t2i_row
from modlab.data.tokens import TokenSpace
from modlab.errors import ConfigError
from modlab.models.config import ModelConfig
from modlab.models.omni_attention import omni_attention_mask
from modlab.models.showo import ShowO
from modlab.routing.install import install_routing

SP = TokenSpace(17)
CFG = ModelConfig(d_model=32, n_layer=4, n_head=2)


def tiny_model() -> ShowO:
    torch.manual_seed(0)
    return ShowO(CFG, SP, 64).eval()


def task_batches(n: int = 3) -> dict[str, list[dict]]:
    g = torch.Generator().manual_seed(1)
    codes = [torch.randint(0, 17, (64,), generator=g) for _ in range(n)]
    captions = ["a 3", "a handwritten seven", "the digit 1"]  # different lengths: padding
    return {
        "t2i": [collate_rows([t2i_row(SP, captions[i % 3], codes[i], 64, 3) for i in range(n)], SP.pad)],
        "mmu": [collate_rows([mmu_row(SP, codes[i], "what digit?", "a 3" * (i + 1), 3) for i in range(n)], SP.pad)],
        "lm": [collate_rows([lm_row(bytes(range(65, 65 + 20 + i))) for i in range(n)], SP.pad)],
    }


# ---- ARank ------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 3, 8])
def test_arank_of_a_rank_r_score_matrix_is_r(r):
    g = torch.Generator().manual_seed(r)
    B, H, T, d = 2, 3, 40, 16
    q = torch.randn(B, H, T, r, generator=g) @ torch.randn(r, d, generator=g)  # rank r
    k = torch.randn(B, H, T, d, generator=g)  # full rank d
    valid = torch.ones(B, T, dtype=torch.bool)
    assert (head_ranks(q, k, valid, rtol=1e-6) == r).all()
    # the full-rank case is bounded by head_dim
    assert (head_ranks(k, k.flip(2), valid, rtol=1e-6) == d).all()


def test_arank_ignores_padding_and_counts_only_valid_tokens():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 12, 16, generator=g), torch.randn(1, 1, 12, 16, generator=g)
    valid = torch.zeros(1, 12, dtype=torch.bool)
    valid[0, :5] = True  # 5 valid tokens: rank <= 5 whatever sits in the padding
    assert int(head_ranks(q, k, valid, rtol=1e-6)) == 5
    assert int(head_ranks(q[:, :, :5], k[:, :, :5], valid[:, :5], rtol=1e-6)) == 5


def test_numerical_rank_tolerance_and_post_softmax_of_a_causal_map():
    m = torch.diag(torch.tensor([1.0, 0.5, 1e-3, 0.0]))
    assert int(numerical_rank(m, 1e-2)) == 2 and int(numerical_rank(m, 1e-4)) == 3
    # a causal softmax map is triangular with a positive diagonal: full rank
    T = 6
    q = torch.zeros(1, 1, T, 4)  # equal scores: uniform attention over the allowed keys
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    assert int(head_ranks(q, q, torch.ones(1, T, dtype=torch.bool), 1e-6, "post_softmax", mask)) == T


def test_arank_analysis_rows_per_task_and_layer():
    model = tiny_model()
    rows = arank_analysis(showo_subject(model), task_batches(), rtol=1e-2)
    assert {(r["task"], r["layer"]) for r in rows} == {(t, i) for t in ("t2i", "mmu", "lm") for i in range(4)}
    for r in rows:
        assert 1 <= r["arank"] <= CFG.head_dim and len(r["head_arank"]) == CFG.n_head
        assert_close(r["arank_norm"], r["arank"] / r["seq_len"], rtol=0.05, atol=0.0)  # rows differ in length


# ---- attention fractions ----------------------------------------------------------------------


def test_attention_fractions_of_a_hand_built_map():
    # tokens: 0 text, 1 image, 2 image, 3 padding
    is_image = torch.tensor([[False, True, True, False]])
    valid = torch.tensor([[True, True, True, False]])
    probs = torch.tensor(
        [[[[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.2, 0.3, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]]]]
    )  # the padding query must not count
    got = image_mass(probs, is_image, valid)
    assert got["text"] == (0.0, 1)
    assert got["image"][1] == 2 and got["image"][0] == pytest.approx(0.5 + 0.8)
    assert got["all"][1] == 3 and got["all"][0] == pytest.approx(1.3)


def test_attention_analysis_with_uniform_attention_matches_the_mask():
    # zero q and k: every query spreads its attention evenly over the keys the omni mask allows,
    # so the share on image keys is (allowed image keys) / (allowed keys), known from the mask
    model = tiny_model()
    with torch.no_grad():
        for block in model.transformer.blocks:
            block.attn.qkv.weight[: 2 * CFG.d_model].zero_()
    batches = task_batches()
    rows, maps = attention_analysis(showo_subject(model), batches)
    frac = {(r["task"], r["layer"], r["query"]): r["to_image"] for r in rows}
    for task in ("t2i", "mmu", "lm"):
        b = batches[task][0]
        allowed = omni_attention_mask(b["is_image"], b["valid"])[:, 0].float()
        share = (allowed * b["is_image"][:, None, :]).sum(-1) / allowed.sum(-1)  # (B, T) per query
        for kind, queries in (
            ("all", b["valid"]),
            ("text", b["valid"] & ~b["is_image"]),
            ("image", b["valid"] & b["is_image"]),
        ):
            if queries.any():
                for i in range(4):
                    assert frac[(task, i, kind)] == pytest.approx(float(share[queries].mean()), abs=1e-5)
                    uniform = next(
                        r["uniform_to_image"] for r in rows if (r["task"], r["layer"], r["query"]) == (task, i, kind)
                    )
                    assert uniform == pytest.approx(float(share[queries].mean()), abs=1e-5)
    assert ("lm", 0, "image") not in frac and frac[("lm", 0, "all")] == 0.0
    assert maps["t2i"].shape[0] == 4
    assert_close(maps["mmu"][0].sum(-1), torch.ones(maps["mmu"].shape[1]))  # each map row is a distribution


# ---- importance --------------------------------------------------------------------------------


def test_llm_drop_importance_is_zero_for_a_sublayer_that_outputs_zeros():
    model = tiny_model()
    with torch.no_grad():
        model.transformer.blocks[1].attn.proj.weight.zero_()
        model.transformer.blocks[2].mlp.down.weight.zero_()
    rows = llm_drop_importance(showo_subject(model), task_batches())
    imp = {(r["task"], r["layer"], r["sublayer"]): r["importance"] for r in rows}
    for task in ("t2i", "mmu", "lm"):
        assert imp[(task, 1, "attn")] == pytest.approx(0.0, abs=1e-6)
        assert imp[(task, 2, "mlp")] == pytest.approx(0.0, abs=1e-6)
        assert imp[(task, 1, "mlp")] > 1e-5 and imp[(task, 0, "attn")] > 1e-5
        assert imp[(task, 2, "block")] == pytest.approx(imp[(task, 2, "attn")], abs=1e-6)


def test_skip_one_layer_restores_the_model_even_on_error():
    model = tiny_model()
    subject, batch = showo_subject(model), task_batches()["mmu"][0]
    layers = list(model.transformer.blocks)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = subject.run(batch)
        with skip_layer(model.transformer.blocks, 2):
            skipped = subject.run(batch)
        with pytest.raises(RuntimeError), skip_layer(model.transformer.blocks, 1):
            raise RuntimeError("boom")
    assert not torch.allclose(before, skipped)
    rows = drop_layer_importance(subject, task_batches(), {"const": lambda: 1.0})
    assert list(model.transformer.blocks) == layers
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(subject.run(batch), before)
    losses = {(r["dropped"], r["task"]): r["value"] for r in rows if r["metric"] == "loss"}
    assert len(losses) == 5 * 3 and all(v > 0 for v in losses.values())
    assert sum(losses[(d, "t2i")] != losses[(-1, "t2i")] for d in range(4)) == 4


# ---- routing plan ------------------------------------------------------------------------------


def _arank_rows(arank: dict[str, list[float]], n: int = 40) -> list[dict]:
    return [
        {"task": t, "layer": i, "arank_rel": v, "arank": v * 32, "arank_norm": v * 32 / n, "seq_len": n}
        for t, vs in arank.items()
        for i, v in enumerate(vs)
    ]


def test_plan_routes_the_more_redundant_half_with_arank_capacities():
    # the plan rule changed (issue 12): capacities now come from a FLOPs target, not ARank / n;
    # this keeps the layer choice checks (tests/unit/test_plan_flops_target.py checks the budget)
    model, data = ModelConfig(d_model=64, n_layer=4, n_head=2), DataConfig(batch_size={"t2i": 8, "mmu": 8, "lm": 0})

    def plan_of(arank, cfg, importance=None, source=None):
        return plan_from_arank(_arank_rows(arank), cfg, model, 300, data, importance, source)

    arank = {"t2i": [0.9, 0.5, 0.6, 0.05], "mmu": [0.3, 0.3, 0.3, 0.3], "lm": [0.1] * 4}
    plan = plan_of(arank, PlanConfig(tasks=["t2i", "mmu"], min_capacity=0.1, target_flops_ratio=0.6), source={"x": 1})
    assert plan.n_layer == 4 and set(plan.tasks) == {"t2i", "mmu"} and plan.source["x"] == 1
    assert plan.tasks["t2i"].layers == [1, 3] and plan.tasks["t2i"].capacity[1] == 0.1  # most redundant: floor
    assert plan.tasks["mmu"].layers == [2, 3]  # ties: deeper
    # ARank alone routes 1 and 3; layer 3 being the most important block moves it out for layer 2
    arank = {"t2i": [0.9, 0.5, 0.6, 0.55]}
    cfg = PlanConfig(tasks=["t2i"], target_flops_ratio=0.7)
    data = DataConfig(batch_size={"t2i": 8, "mmu": 0, "lm": 0})
    assert plan_of(arank, cfg).tasks["t2i"].layers == [1, 3]
    plan = plan_of(arank, cfg, importance={"t2i": [0.5, 0.01, 0.02, 0.9]})
    assert plan.tasks["t2i"].layers == [1, 2]
    with pytest.raises(ConfigError, match="calibration"):
        plan_of({"t2i": [0.5] * 4}, PlanConfig(tasks=["mmu"]))


def test_zero_calibration_rows_and_unknown_jobs_are_config_errors():
    with pytest.raises(ConfigError, match="n_per_task"):
        CalibrationConfig(n_per_task=0)
    from modlab.analysis.config import AnalysisConfig

    with pytest.raises(ConfigError, match="unknown analysis job"):
        AnalysisConfig(job="nope")


# ---- interactions: packing for a joint budget ---------------------------------------------------


def test_packed_rows_give_the_same_logits_as_separate_rows():
    model = tiny_model()
    b = task_batches()
    packed = pack_rows([b["t2i"][0], b["mmu"][0]], SP.pad)
    with torch.no_grad():
        joint = packed_logits(model, packed)
        for s, task in enumerate(("t2i", "mmu")):
            alone = showo_subject(model).run(b[task][0])
            for row in range(3):
                n = int(b[task][0]["valid"][row].sum())
                where = packed["segment"][row] == s
                assert_close(joint[row][where], alone[row, :n], atol=1e-5, rtol=1e-4)


def test_task_routers_keep_their_capacity_and_a_shared_router_shares_one_budget():
    b = task_batches()
    model = tiny_model()
    install_routing(model.transformer.blocks, CFG.d_model, {3: [0.25]}, "ste_sigmoid")
    packed = pack_rows([b["t2i"][0], b["mmu"][0]], SP.pad)
    kept = kept_fractions(model, packed["segment_task"], lambda: packed_logits(model, packed))
    (k1, n1), (k2, n2) = kept[(3, "t2i")], kept[(3, "mmu")]
    per_row = packed["valid"].sum(1)
    assert k1 + k2 == int(torch.ceil(0.25 * per_row - 1e-6).sum())  # one budget over both tasks
    assert n1 + n2 == int(per_row.sum())

    model = tiny_model()
    install_routing(model.transformer.blocks, CFG.d_model, {3: [0.25, 0.5, 1.0]}, "ste_sigmoid")
    batch = b["mmu"][0]
    seg = torch.where(batch["valid"], batch["task"][:, None], -1)
    k, n = kept_fractions(model, seg, lambda: showo_subject(model).run(batch))[(3, "mmu")]
    assert k == int(torch.ceil(0.5 * batch["valid"].sum(1) - 1e-6).sum()) and n == int(batch["valid"].sum())


# ---- compare -----------------------------------------------------------------------------------


def test_pareto_front_known_answer():
    pts = [{"x": 1, "m": 0.5}, {"x": 2, "m": 0.4}, {"x": 3, "m": 0.9}, {"x": 3, "m": 0.7}, {"x": 4, "m": 0.95}]
    assert [(p["x"], p["m"]) for p in pareto_front(pts, "x", "m", True)] == [(1, 0.5), (3, 0.9), (4, 0.95)]
    assert [(p["x"], p["m"]) for p in pareto_front(pts, "x", "m", False)] == [(1, 0.5), (2, 0.4)]
