"""`modlab analyze interactions` (Show-o-like checkpoints), repeated over `analysis.interactions.seeds`:
(a) the same fresh model trained on one task alone vs on all tasks jointly, at equal steps per
task: held-out loss per task, mean ± std over seeds, and joint - single paired by seed;
(b) routing on the last half of the layers with one shared router and a joint budget vs task
routers, the routers alone tuned on the frozen checkpoint until the routing stops moving: the
fraction of each task's tokens kept per layer (a curve), and shared - task paired by seed.
Only a difference whose 95 % interval excludes 0 ("exceeds the seed spread") is a finding."""

from __future__ import annotations

from modlab.analysis.calibration import image_rows
from modlab.analysis.interactions import RowSampler, joint_vs_single_seeds, router_competition
from modlab.analysis.report import JobResult, PlotSpec
from modlab.data.rows import LMRows
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.errors import ConfigError
from modlab.models.showo import ShowO
from modlab.routing.install import dense_key


def _pm(r: dict) -> str:
    return f"{r['mean']:.4f} ± {r['std']:.4f}"


def _diff(r: dict) -> str:
    ci = "-" if r["ci95"] is None else f"± {r['ci95']:.4f}"
    return f"{r['mean']:+.4f} {ci}{' *' if r['exceeds_spread'] else ''}"


def run(c, target, progress) -> JobResult:
    module, batches = target.loaded, target.batches
    ic = c.analysis.interactions
    missing = [t for t in ic.tasks if t not in batches]
    if missing:
        raise ConfigError(
            f"analysis.interactions.tasks {missing} have no calibration rows (add them to calibration.tasks)"
        )
    sp, tok, d = module.space, module.image_tokenizer, module.data_cfg
    # training rows of the checkpoint's own kind (digits or scenes), in the training form
    datasets = image_rows(d, tok, [t for t in ("t2i", "mmu") if t in ic.tasks], "train", train=True)
    if "lm" in ic.tasks:
        datasets["lm"] = LMRows(split_corpus(load_corpus(d.lm_files))["train"], d.lm_length, train=True)
    held_out = {t: batches[t] for t in ic.tasks}
    weights, drop = module.objective_cfg.loss_weights, module.objective_cfg.cond_dropout

    def samplers(seed: int):
        return {t: RowSampler(ds, ic.batch_size, sp.pad, seed + i) for i, (t, ds) in enumerate(datasets.items())}

    result = JobResult(tables={}, shown=[])
    seeds = f"{len(ic.seeds)} seed{'s' if len(ic.seeds) > 1 else ''}"
    if ic.joint_training:
        advance = progress.task("single-task vs joint training", ic.steps * (len(ic.tasks) + 1) * len(ic.seeds))
        a = joint_vs_single_seeds(
            lambda: ShowO(module.model_cfg, sp, tok.n_tokens),
            samplers,
            held_out,
            ic.steps,
            ic.lr,
            weights,
            drop,
            list(ic.seeds),
            ic.eval_every,
            advance,
        )
        result.tables |= {f"joint_training_{k}": v for k, v in a.items()}
        result.tables["joint_training"] = a["final"]
        got = {(r["run"], r["task"]): r for r in a["summary"]}
        diff = {r["task"]: r for r in a["difference"]}
        result.shown.append(
            (
                f"held-out loss after {ic.steps} steps per task from scratch, {seeds} (mean ± std; "
                "joint - single paired by seed ± 95 % interval, * = exceeds the seed spread)",
                ["task", "single-task run", "joint run", "joint - single"],
                [[t, _pm(got[(f"single:{t}", t)]), _pm(got[("joint", t)]), _diff(diff[t])] for t in ic.tasks],
            )
        )
        bars = {
            t: {"single-task": got[(f"single:{t}", t)]["mean"], "joint": got[("joint", t)]["mean"]} for t in ic.tasks
        }
        result.plots.append(PlotSpec("bars", "joint_training.png", {"panels": bars, "ylabel": "held-out loss"}))
    if ic.shared_router:
        layers = list(range(module.model_cfg.n_layer // 2, module.model_cfg.n_layer))
        advance = progress.task("shared router vs task routers", 2 * ic.router_max_steps * len(ic.seeds))
        b = router_competition(
            dense_copy(module),
            lambda s: samplers(s + 100),
            held_out,
            layers,
            ic.capacity,
            ic.router_lr,
            weights,
            drop,
            list(ic.seeds),
            sp.pad,
            ic.router_max_steps,
            ic.router_eval_every,
            ic.router_tol,
            ic.router_patience,
            advance,
        )
        result.tables |= {f"router_{k}": v for k, v in b.items()}
        got = {(r["router"], r["layer"], r["task"]): r for r in b["summary"]}
        gap = {(r["layer"], r["task"]): r for r in b["gap"]}
        converged = sum(r["converged"] for r in b["runs"])
        result.shown.append(
            (
                f"tokens kept per task (capacity {ic.capacity:g}, layers {layers}, routers tuned alone until the "
                f"routing stops moving: {converged}/{len(b['runs'])} runs converged), {seeds}",
                ["layer", "task", "shared router", "task routers", "shared - task"],
                [
                    [i, t, _pm(got[("shared", i, t)]), _pm(got[("task", i, t)]), _diff(gap[(i, t)])]
                    for i in layers
                    for t in ic.tasks
                    if (i, t) in gap
                ],
            )
        )
        lo = {(r["router"], r["task"]): r for r in b["loss_summary"]}
        result.shown.append(
            (
                "held-out loss after the router-only tuning",
                ["task", "shared router", "task routers"],
                [[t, _pm(lo[("shared", t)]), _pm(lo[("task", t)])] for t in ic.tasks if ("shared", t) in lo],
            )
        )
        result.plots.append(
            PlotSpec(
                "per_layer",
                "router_competition.png",
                {
                    "panels": {
                        f"{r} router{'s' if r == 'task' else ''}": {
                            t: [got[(r, i, t)]["mean"] for i in layers] for t in ic.tasks
                        }
                        for r in ("shared", "task")
                    },
                    "ylabel": "fraction of tokens kept",
                    "title": "tokens kept per task per routed layer, mean over seeds (dashed: capacity)",
                    "layers": layers,
                    "hline": ic.capacity,
                },
            )
        )
        result.notes.append(
            f"router_curve.csv: the kept fraction at every check (router_eval_every={ic.router_eval_every}); "
            f"{converged} of {len(b['runs'])} runs converged (router_tol={ic.router_tol:g})"
        )
    return result


def dense_copy(module):
    """The checkpoint's model without its routers (routed layers unwrapped), in eval mode."""
    model = ShowO(module.model_cfg, module.space, module.image_tokenizer.n_tokens)
    model.load_state_dict({dense_key(k): v for k, v in module.model.state_dict().items() if ".router." not in k})
    return model.eval()
