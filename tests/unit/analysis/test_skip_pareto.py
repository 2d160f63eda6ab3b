"""MindSkip against the static attention drop (modlab.analysis.skip_pareto): the static curve
read from an evaluation's metrics, log-linear interpolation between whole layers, verdicts
against the seed spread (numbers checked by hand), and `modlab compare` writing the table and
plot."""

import math
from pathlib import Path

import pytest
from helpers import only_run_dir, run_modlab
from test_compare_seeds import write_run

from modlab.analysis.skip_pareto import skip_pareto_rows, static_at, static_curve

EVAL = {"test/ppl_base": 20.0, "test/ppl_static_drop_1": 21.0, "test/ppl_static_drop_2": 24.0}


def test_static_curve_starts_at_the_base_and_interpolates_log_linearly():
    curve = static_curve([{"test/ppl": 5.0}, EVAL])
    assert curve == [(0, 20.0), (1, 21.0), (2, 24.0)]
    assert math.isclose(static_at(curve, 1.5), math.sqrt(21.0 * 24.0))
    assert math.isclose(static_at(curve, 0.0), 20.0) and static_at(curve, 2.5) is None
    assert static_curve([{"test/ppl": 5.0}]) == []


@pytest.mark.parametrize(
    ("ppl", "std", "verdict"),
    [
        (21.0, 1.0, "better beyond the seed spread"),  # 22 < sqrt(21 * 24) = 22.45
        (22.0, 1.0, "within the seed spread"),
        (24.0, 1.0, "worse beyond the seed spread"),  # 23 > 22.45
        (22.0, 0.0, "better (one seed)"),
    ],
)
def test_a_routed_point_is_judged_against_the_static_drop_at_its_own_budget(ppl, std, verdict):
    point = {"label": "rt", "n": 3, "test/skipped_attention_per_seq": 1.5, "test/ppl": ppl, "test/ppl_std": std}
    (row,) = skip_pareto_rows([point], static_curve([EVAL]))
    assert row["verdict"] == verdict and math.isclose(row["static_drop_ppl"], math.sqrt(21.0 * 24.0))
    far = {**point, "test/skipped_attention_per_seq": 3.0}
    assert skip_pareto_rows([far], static_curve([EVAL]))[0]["verdict"] == "no static point at this budget"


def test_compare_writes_the_skip_pareto_of_seeded_router_tuning_runs(tmp_path: Path, tmp_path_factory):
    for seed, (skipped, ppl) in zip((1, 2, 3), ((1.4, 21.5), (1.5, 22.0), (1.6, 22.5))):
        write_run(
            tmp_path,
            f"rt_{seed}",
            "hf_router_tuning",
            seed,
            ["mindskip.init_logit=2"],
            {"test/skipped_attention_per_seq": skipped, "test/ppl": ppl, "test/ppl_base": 20.0},
        )
    write_run(tmp_path, "static", "eval", 0, ["eval.static_drop_counts=[1,2]"], EVAL)
    out_dir = tmp_path_factory.mktemp("compare")
    out = run_modlab("compare", str(tmp_path), out_dir=out_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    run = only_run_dir(out_dir)
    assert (run / "skip_pareto.png").is_file()
    rows = (run / "skip_pareto.csv").read_text().splitlines()
    rt = next(r for r in rows if r.startswith("hf_router_tuning"))
    assert ",3," in rt and "within the seed spread" in rt  # 22.0 ± 0.5 vs 22.45 at 1.5 skipped
    assert "MindSkip vs static attention drop" in out.stdout
