"""Defect 6 (issue 12): the interactions job must measure learned routing, over seeds.

Router competition tunes the routers alone (the checkpoint's weights stay put) until the kept
fractions and routing decisions stop moving, recording the curve, for several seeds; joint vs
single-task training compares runs at equal steps per task, with the spread over seeds."""

from __future__ import annotations

import copy

import pytest
import torch

from modlab.analysis.calibration import calibration_batches
from modlab.analysis.interactions import (
    RowSampler,
    joint_vs_single_seeds,
    masked_pair,
    paired_difference,
    router_competition,
    router_parameters,
    train_steps,
)
from modlab.data.config import DataConfig
from modlab.data.digits import load_digit_splits
from modlab.data.rows import DigitRows
from modlab.data.tokens import TokenSpace
from modlab.models.config import ModelConfig
from modlab.models.showo import ShowO
from modlab.routing.install import install_routing
from modlab.training.digits_datamodule import image_tokenizer_for

CFG = ModelConfig(d_model=32, n_layer=4, n_head=2)
DATA = DataConfig()
WEIGHTS = {"t2i": 1.0, "mmu": 1.0}


class CountingSampler(RowSampler):
    """A RowSampler that counts the batches it hands out."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return super().__call__()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    splits = load_digit_splits(DATA.split_seed)
    tok = image_tokenizer_for(DATA).fit(splits["train"].images)
    space = TokenSpace(tok.n_codes)
    codes = tok.encode(splits["train"].images)
    sets = {t: DigitRows(space, codes, splits["train"].labels, t, train=True) for t in ("t2i", "mmu")}
    held_out = calibration_batches(DATA, tok, ["t2i", "mmu"], 8, seed=0, batch_size=8)
    base = ShowO(CFG, space, tok.n_tokens)
    train_steps(
        base,
        lambda: sum(base.task_losses(base.training_batch(RowSampler(sets["t2i"], 8, space.pad, 0)())).values()),
        3,
        3e-3,
    )
    made: list[dict] = []

    def make_samplers(seed: int) -> dict:
        samplers = {t: CountingSampler(ds, 6, space.pad, seed + i) for i, (t, ds) in enumerate(sets.items())}
        made.append(samplers)
        return samplers

    return base.eval(), space, held_out, make_samplers, made


def test_router_only_training_leaves_the_model_weights_alone(setup):
    base, space, held_out, make_samplers, _ = setup
    model = copy.deepcopy(base)
    install_routing(model.transformer.blocks, CFG.d_model, {2: [0.25], 3: [0.25]}, "ste_sigmoid")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samplers = make_samplers(0)
    loss = lambda: sum(
        model.task_losses(p)["t2i" if p["task"][0] == 0 else "mmu"]
        for p in masked_pair(model, {t: s() for t, s in samplers.items()}, 0.0)
    )
    train_steps(model, loss, 5, 1e-2, weight_decay=0.0, params=router_parameters(model))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".router." in k for k in changed), changed
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards


def test_the_quick_router_comparison_no_longer_trains_the_model(setup):
    """At capacity 1 a routed model computes exactly its base (the straight-through weight is 1),
    so with router-only tuning the task routers' held-out loss is the base's, bit for bit. The old
    job trained every weight for those steps and moved it."""
    base, space, held_out, make_samplers, _ = setup
    samplers = make_samplers(5)
    t = router_competition(
        base, lambda seed: samplers, held_out, [2, 3], 1.0, 1e-2, WEIGHTS, 0.0, [0], space.pad,
        max_steps=4, eval_every=4, tol=0.0, patience=1,
    )  # fmt: skip
    losses = t["losses"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        parts = {t: held_out[t][0] for t in ("t2i", "mmu")}
        expected = {k: float(v) for p in masked_pair(base, parts, 0.0, g) for k, v in base.task_losses(p).items()}
    got = {r["task"]: r["loss"] for r in losses if r["router"] == "task"}
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_router_competition_tunes_until_stable_over_seeds(setup):
    base, space, held_out, make_samplers, _ = setup
    seeds, tol, patience, every, max_steps = [0, 1, 2], 0.02, 2, 5, 40
    t = router_competition(
        base, make_samplers, held_out, [2, 3], 0.25, 3e-2, WEIGHTS, 0.0, seeds, space.pad,
        max_steps=max_steps, eval_every=every, tol=tol, patience=patience,
    )  # fmt: skip
    for router in ("shared", "task"):
        for seed in seeds:
            run = next(r for r in t["runs"] if r["router"] == router and r["seed"] == seed)
            steps = sorted({r["step"] for r in t["curve"] if r["router"] == router and r["seed"] == seed})
            assert steps[0] == 0 and steps[-1] == run["steps"] and all(b - a == every for a, b in zip(steps, steps[1:]))
            moves = [m for m in t["movement"] if m["router"] == router and m["seed"] == seed]
            calm = [max(m["kept_change"], m["flipped"]) < tol for m in moves]
            if run["converged"]:
                assert all(calm[-patience:]) and run["steps"] <= max_steps
            else:
                assert run["steps"] == max_steps
    # routers really moved: some held-out decision flipped during tuning
    assert any(m["flipped"] > 0 for m in t["movement"])
    summary = {(r["router"], r["layer"], r["task"]): r for r in t["summary"]}
    assert len(summary) == 2 * 2 * 2 and all(r["n"] == 3 for r in summary.values())
    # task routers keep exactly their capacity of each task's tokens; a shared budget need not
    assert all(abs(summary[("task", i, task)]["mean"] - 0.25) < 0.03 for i in (2, 3) for task in ("t2i", "mmu"))
    gap = {(r["layer"], r["task"]): r for r in t["gap"]}
    assert set(gap) == {(i, task) for i in (2, 3) for task in ("t2i", "mmu")}
    assert all(r["n"] == 3 and r["ci95"] is not None for r in gap.values())
    assert {r["router"] for r in t["loss_summary"]} == {"shared", "task"}


def test_joint_vs_single_at_equal_steps_per_task_with_spread(setup):
    base, space, held_out, make_samplers, made = setup
    made.clear()
    t = joint_vs_single_seeds(
        lambda: ShowO(CFG, space, base.image_pos.num_embeddings), make_samplers, held_out, 4, 3e-3, WEIGHTS, 0.0,
        [0, 1], eval_every=2,
    )  # fmt: skip
    # every run's task samplers were each asked for `steps` batches: equal steps per task
    runs = made[1:]  # made[0]: the samplers that only named the tasks
    assert len(runs) == 2 * 3
    for samplers in runs:
        assert sorted(s.calls for s in samplers.values()) in ([0, 4], [4, 4])
    assert {r["step"] for r in t["curve"]} == {0, 2, 4}
    assert {(r["run"], r["task"]) for r in t["summary"]} == {
        ("single:t2i", "t2i"),
        ("single:mmu", "mmu"),
        ("joint", "t2i"),
        ("joint", "mmu"),
    }
    assert all(r["n"] == 2 for r in t["summary"])
    diff = {r["task"]: r for r in t["difference"]}
    final = {(r["run"], r["seed"], r["task"]): r["loss"] for r in t["final"]}
    for task in ("t2i", "mmu"):
        d = [final[("joint", s, task)] - final[(f"single:{task}", s, task)] for s in (0, 1)]
        assert diff[task]["mean"] == pytest.approx(sum(d) / 2) and diff[task]["n"] == 2


def test_paired_difference_flags_only_gaps_beyond_the_seed_spread():
    rows = [
        {"arm": a, "seed": s, "k": 0, "v": v}
        for s, (x, y) in enumerate([(1.0, 0.0), (1.1, 0.0), (0.9, 0.0)])
        for a, v in (("a", x), ("b", y))
    ]
    rows += [
        {"arm": a, "seed": s, "k": 1, "v": v}
        for s, (x, y) in enumerate([(1.0, 0.0), (-1.0, 0.0), (0.2, 0.0)])
        for a, v in (("a", x), ("b", y))
    ]
    out = {r["k"]: r for r in paired_difference(rows, "arm", "a", "b", ("k",), "v")}
    assert out[0]["exceeds_spread"] and not out[1]["exceeds_spread"]
    assert out[0]["mean"] == pytest.approx(1.0) and out[0]["n"] == 3


def test_interactions_config_checks_its_seeds_and_convergence_settings():
    from modlab.analysis.config import InteractionsConfig
    from modlab.errors import ConfigError

    c = InteractionsConfig()
    assert len(c.seeds) >= 3 and c.router_max_steps >= c.router_eval_every
    for bad in ({"seeds": []}, {"seeds": [1, 1]}, {"router_eval_every": 0}, {"router_tol": 0.0}, {"eval_every": -1}):
        with pytest.raises(ConfigError, match="analysis.interactions"):
            InteractionsConfig(**bad)
