"""`modlab analyze interactions` (Show-o-like checkpoints): (a) the same fresh model trained on one
task alone vs on all tasks jointly (held-out loss per task); (b) routing on the last half of the
layers, fine-tuned with one shared router and a joint budget vs with task routers (the fraction of
each task's tokens kept per layer)."""

from __future__ import annotations

from modlab.analysis.report import JobResult, PlotSpec, fmt


def run(c, target, progress) -> JobResult:
    from modlab.analysis.interactions import RowSampler, joint_vs_single, shared_vs_task_routers
    from modlab.data.digits import load_digit_splits
    from modlab.data.rows import DigitRows, LMRows
    from modlab.data.text_corpus import load_corpus, split_corpus
    from modlab.errors import ConfigError
    from modlab.models.showo import ShowO

    module, batches = target.loaded, target.batches
    ic = c.analysis.interactions
    missing = [t for t in ic.tasks if t not in batches]
    if missing:
        raise ConfigError(
            f"analysis.interactions.tasks {missing} have no calibration rows (add them to calibration.tasks)"
        )
    sp, tok, d = module.space, module.image_tokenizer, module.data_cfg
    train = load_digit_splits(d.split_seed)["train"]
    codes = tok.encode(train.images)
    datasets = {t: DigitRows(sp, codes, train.labels, t, train=True) for t in ("t2i", "mmu") if t in ic.tasks}
    if "lm" in ic.tasks:
        datasets["lm"] = LMRows(split_corpus(load_corpus(d.lm_files))["train"], d.lm_length, train=True)
    held_out = {t: batches[t] for t in ic.tasks}
    weights, drop = module.objective_cfg.loss_weights, module.objective_cfg.cond_dropout

    def samplers(seed: int):
        return {t: RowSampler(ds, ic.batch_size, sp.pad, seed + i) for i, (t, ds) in enumerate(datasets.items())}

    tables, shown, plots, notes = {}, [], [], []
    if ic.joint_training:
        advance = progress.task("single-task vs joint training", ic.steps * (len(ic.tasks) + 1))
        rows = joint_vs_single(
            lambda: ShowO(module.model_cfg, sp, tok.n_tokens),
            lambda: samplers(c.seed),
            held_out,
            ic.steps,
            ic.lr,
            weights,
            drop,
            c.seed,
            advance,
        )
        tables["joint_training"] = rows
        got = {(r["run"], r["task"]): r["loss"] for r in rows}
        shown.append(
            (
                f"held-out loss after {ic.steps} steps from scratch (single-task vs joint)",
                ["task", "single-task run", "joint run", "joint - single"],
                [
                    [
                        t,
                        fmt(got[(f"single:{t}", t)]),
                        fmt(got[("joint", t)]),
                        f"{got[('joint', t)] - got[(f'single:{t}', t)]:+.4f}",
                    ]
                    for t in ic.tasks
                ],
            )
        )
        bars = {t: {"single-task": got[(f"single:{t}", t)], "joint": got[("joint", t)]} for t in ic.tasks}
        plots.append(PlotSpec("bars", "joint_training.png", {"panels": bars, "ylabel": "held-out loss"}))
    if ic.shared_router:
        layers = list(range(module.model_cfg.n_layer // 2, module.model_cfg.n_layer))
        advance = progress.task("shared router vs task routers", 2 * ic.router_steps)
        kept, losses = shared_vs_task_routers(
            dense_copy(module),
            samplers(c.seed + 100),
            held_out,
            layers,
            ic.capacity,
            ic.router_steps,
            ic.router_lr,
            weights,
            drop,
            c.seed,
            sp.pad,
            advance,
        )
        tables["router_competition"], tables["router_losses"] = kept, losses
        got = {(r["router"], r["stage"], r["layer"], r["task"]): r["kept_fraction"] for r in kept}
        shown.append(
            (
                f"tokens kept per task (capacity {ic.capacity:g}, routed layers {layers}, "
                f"after {ic.router_steps} steps)",
                ["layer", "task", "shared router, init", "shared router, tuned", "task routers, tuned"],
                [
                    [
                        i,
                        t,
                        fmt(got.get(("shared", "init", i, t))),
                        fmt(got.get(("shared", "tuned", i, t))),
                        fmt(got.get(("task", "tuned", i, t))),
                    ]
                    for i in layers
                    for t in ic.tasks
                ],
            )
        )
        lo = {(r["router"], r["task"]): r["loss"] for r in losses}
        shown.append(
            (
                "held-out loss after the routed fine-tune",
                ["task", "shared router", "task routers"],
                [[t, fmt(lo.get(("shared", t))), fmt(lo.get(("task", t)))] for t in ic.tasks],
            )
        )
        panels = {
            f"{r} router{'s' if r == 'task' else ''}, tuned": {
                t: [got[(r, "tuned", i, t)] for i in layers] for t in ic.tasks
            }
            for r in ("shared", "task")
        }
        plots.append(
            PlotSpec(
                "per_layer",
                "router_competition.png",
                {
                    "panels": panels,
                    "ylabel": "fraction of tokens kept",
                    "title": "tokens kept per task per routed layer (dashed: capacity)",
                    "layers": layers,
                    "hline": ic.capacity,
                },
            )
        )
    return JobResult(tables=tables, shown=shown, plots=plots, notes=notes)


def dense_copy(module):
    """The checkpoint's model without its routers (routed layers unwrapped), in eval mode."""
    from modlab.models.showo import ShowO
    from modlab.training.checkpoint import dense_key

    model = ShowO(module.model_cfg, module.space, module.image_tokenizer.n_tokens)
    model.load_state_dict({dense_key(k): v for k, v in module.model.state_dict().items() if ".router." not in k})
    return model.eval()
