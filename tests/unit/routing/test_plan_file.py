"""Routing plan files, per-task layer switches and capacity schedules."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import ROUTING_CFG as CFG
from helpers import routed_block_inputs as batch
from helpers import traced

from modlab.data.tokens import TASKS
from modlab.errors import ConfigError
from modlab.models.transformer import Block
from modlab.routing.config import RoutingConfig, ScheduleConfig
from modlab.routing.install import set_anneal_fraction
from modlab.routing.plan_file import RoutingPlan, TaskPlan, load_plan, save_plan
from modlab.routing.routed_block import RoutedBlock
from modlab.routing.schedule import anneal_fraction, annealed_capacity


def caps(table: dict, layer: int) -> dict:
    return dict(zip(TASKS, table[layer]))


def test_plan_round_trip_and_layer_switch(tmp_path):
    plan = RoutingPlan(4, {"t2i": TaskPlan([3], [0.8]), "mmu": TaskPlan([1, 2, 3], [0.5, 0.4, 0.2])}, {"from": "test"})
    path = save_plan(plan, tmp_path / "plan.yaml")
    assert load_plan(path) == plan
    table = RoutingConfig(kind="unimod", plan=str(path)).layer_capacities(4)
    assert sorted(table) == [1, 2, 3]
    assert caps(table, 1) == {"t2i": 1.0, "mmu": 0.5, "lm": 1.0}  # MMU-routed layer only
    assert caps(table, 3) == {"t2i": 0.8, "mmu": 0.2, "lm": 1.0}  # both


def test_resolved_config_keeps_the_plan_without_the_file(tmp_path):
    path = save_plan(RoutingPlan(4, {"mmu": TaskPlan([2, 3], [0.4, 0.2])}), tmp_path / "p.yaml")
    cfg = RoutingConfig(kind="unimod", plan=str(path))
    resolved = cfg.resolved(4)
    path.unlink()
    assert resolved.plan is None and resolved.layer_capacities(4) == {2: [1.0, 0.4, 1.0], 3: [1.0, 0.2, 1.0]}


def test_task_layers_switch_without_a_plan():
    cfg = RoutingConfig(
        kind="unimod", layers=[2, 3], task_capacity={"t2i": [0.8], "mmu": [0.3]}, task_layers={"t2i": [3]}
    )
    table = cfg.layer_capacities(4)
    assert caps(table, 2) == {"t2i": 1.0, "mmu": 0.3, "lm": 1.0}
    assert caps(table, 3) == {"t2i": 0.8, "mmu": 0.3, "lm": 1.0}


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "format: modlab-routing-plan\nversion: 1\nn_layer: 4\ntasks: {vqa: {layers: [2], capacity: [0.5]}}\n",
            "unknown task",
        ),
        ("format: modlab-routing-plan\nversion: 1\nn_layer: 4\ntasks: {mmu: {layers: [7], capacity: [0.5]}}\n", "0..3"),
        (
            "format: modlab-routing-plan\nversion: 1\nn_layer: 4\ntasks: {mmu: {layers: [2], capacity: [1.5]}}\n",
            "(0, 1]",
        ),
        (
            "format: modlab-routing-plan\nversion: 1\nn_layer: 4\ntasks: {mmu: {layers: [2, 3], capacity: [0.5]}}\n",
            "2 layers but 1",
        ),
        ("format: modlab-routing-plan\nversion: 2\nn_layer: 4\ntasks: {}\n", "version"),
        ("hello: world\n", "not a modlab routing plan"),
        ("format: modlab-routing-plan\nversion: 1\ntasks: {}\n", "malformed"),
        ("{{{{", "not valid YAML"),
    ],
)
def test_bad_plan_files_are_config_errors(tmp_path, text, needle):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_plan(path)


def test_plan_for_another_depth_and_missing_plan_are_refused(tmp_path):
    path = save_plan(RoutingPlan(8, {"mmu": TaskPlan([6], [0.5])}), tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="8 layers"):
        RoutingConfig(kind="unimod", plan=str(path)).layer_capacities(4)
    with pytest.raises(ConfigError, match="not found"):
        RoutingConfig(kind="unimod", plan=str(tmp_path / "nope.yaml")).layer_capacities(4)
    with pytest.raises(ConfigError, match="needs routers"):
        RoutingConfig(kind="dense", plan=str(path))


def test_a_mod_plan_routes_its_one_task_and_resolves_into_layers_and_capacities(tmp_path):
    path = save_plan(RoutingPlan(4, {"lm": TaskPlan([3, 1], [0.25, 0.5])}), tmp_path / "p.yaml")
    cfg = RoutingConfig(kind="mod", plan=str(path))
    assert cfg.layer_capacities(4) == {1: [0.5], 3: [0.25]}
    resolved = cfg.resolved(4)
    assert resolved.plan is None and resolved.layers == [1, 3] and resolved.layer_capacity == [0.5, 0.25]
    assert resolved.layer_capacities(4) == cfg.layer_capacities(4)
    two = save_plan(RoutingPlan(4, {"t2i": TaskPlan([1], [0.5]), "mmu": TaskPlan([2], [0.5])}), tmp_path / "two.yaml")
    with pytest.raises(ConfigError, match="must route one task"):
        RoutingConfig(kind="mod", plan=str(two)).layer_capacities(4)


def test_mod_per_layer_capacity_list():
    cfg = RoutingConfig(kind="mod", placement="last_half", layer_capacity=[0.5, 0.25])
    assert cfg.layer_capacities(4) == {2: [0.5], 3: [0.25]}
    with pytest.raises(ConfigError, match="3 values for 2 routed layers"):
        RoutingConfig(kind="mod", placement="last_half", layer_capacity=[0.5, 0.25, 0.1]).layer_capacities(4)
    with pytest.raises(ConfigError, match=re.escape("(0, 1]")):
        RoutingConfig(kind="mod", layer_capacity=[0.5, 1.5])


def test_last_n_placement():
    assert RoutingConfig(kind="mod", placement="last_n", n_last=3).routed_layers(4) == [1, 2, 3]
    with pytest.raises(ConfigError, match="n_last"):
        RoutingConfig(kind="mod", placement="last_n").routed_layers(4)


def test_anneal_schedules():
    assert anneal_fraction("constant", 0, 100) == 1.0
    assert anneal_fraction("linear", 25, 100) == 0.25
    assert anneal_fraction("linear", 500, 100) == 1.0
    assert math.isclose(anneal_fraction("cosine", 50, 100), 0.5)
    assert anneal_fraction("cosine", 10, 100) < anneal_fraction("linear", 10, 100)  # slow start
    assert annealed_capacity(0.2, 0.0) == 1.0 and math.isclose(annealed_capacity(0.2, 1.0), 0.2)
    with pytest.raises(ConfigError, match="anneal_steps"):
        ScheduleConfig(kind="linear", anneal_steps=0)


def test_annealed_block_keeps_more_tokens_early_in_training_only():
    torch.manual_seed(0)
    rb = RoutedBlock(Block(CFG), CFG.d_model, [0.25])
    x, positions, mask, route = batch()
    n_valid = route.valid.sum(1)
    set_anneal_fraction(rb, 0.0)  # start of the anneal: dense
    rb.train()
    assert traced(rb, x, positions, mask, route)[1].kept.tolist() == n_valid.tolist()
    set_anneal_fraction(rb, 0.5)  # halfway: capacity 0.625
    kept = traced(rb, x, positions, mask, route)[1].kept
    assert kept.tolist() == [math.ceil(0.625 * int(n)) for n in n_valid]
    rb.eval()  # evaluation always routes at the target
    kept = traced(rb, x, positions, mask, route)[1].kept
    assert kept.tolist() == [math.ceil(0.25 * int(n)) for n in n_valid]
