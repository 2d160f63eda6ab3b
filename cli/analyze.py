"""`modlab analyze <job> ckpt_path=...`: one analysis of a checkpoint.

Every job runs on N held-out calibration rows per task (seeded), prints a rich table and
writes results.json, CSV tables and PNG plots into its run directory; `redundancy` also writes
routing_plan.yaml for `modlab train +experiment=showo_unimod routing.plan=<file>`.

Causal LMs (`+experiment=lm_pretrain` checkpoints, or `model=hf_causal_lm model.path=DIR` with no
checkpoint) have one task, `lm`, calibrated on windows of the held-out text.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig

from modlab.cli.runtime import load_unified_module, read_unified_checkpoint, run_dir, write_csv
from modlab.cli.schema import validate
from modlab.errors import CheckpointError, ConfigError

# Which model architectures (checkpoint `model.arch`) each job can analyse. The Emu3-like model has
# the Show-o-like interface (its own mask and targets), so showo_subject serves it; `interactions`
# packs rows with an omni-attention mask and stays Show-o-only. Causal LMs (lm_subject) have no
# image tokens (no `attention` split); a Hugging Face LM's layers are transformers' own, so only
# `importance` applies (it needs a layer's residual branches, not its queries and keys).
SUPPORTED_ARCHS = {
    "attention": ("showo", "emu3"),
    "importance": ("showo", "emu3", "lm", "hf"),
    "redundancy": ("showo", "emu3", "lm"),
    "interactions": ("showo",),
}
LM_ARCHS = ("lm", "hf")
# A routing plan routes the t2i / mmu rows of a unified model (`modlab train routing.plan=...`);
# nothing trains a causal LM from one (MindSkip chooses its own layers), so `redundancy` writes
# none for an LM and its ARank table stands alone.
NO_LM_PLAN = (
    "no routing plan for a causal LM: plans route the t2i / mmu tasks of a unified model "
    "(the ARank table can guide mindskip.layers)"
)


@dataclass
class JobResult:
    tables: dict[str, list[dict]]  # written as <name>.csv
    shown: list[tuple[str, list[str], list[list]]]  # rich tables: (title, columns, rows)
    plots: list[Path] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # more for results.json
    notes: list[str] = field(default_factory=list)  # printed after the tables


def _check_arch(job: str, arch: str, what: str) -> None:
    if arch not in SUPPORTED_ARCHS[job]:
        raise CheckpointError(
            f"analyze {job} cannot analyse a '{arch}' model ({what}); it analyses: {', '.join(SUPPORTED_ARCHS[job])}"
        )


@dataclass
class CausalLMTarget:
    """A causal LM to analyse (the jobs' `module` for arch lm / hf), loaded without Lightning."""

    lm: object  # CausalLM or HFCausalLM
    tokenizer: object
    data_cfg: object  # DataConfig: which text, rows of how many tokens


def load_checkpoint_for(job: str, ckpt_path: str):
    """(arch, module): a CausalLMTarget for a causal-LM checkpoint, else a UnifiedModule; one-line
    errors for a model the job cannot analyse."""
    from modlab.data.config import DataConfig
    from modlab.tasks.checkpoint import is_lm_checkpoint, load_checkpoint_file, load_pretrained_lm

    if str(ckpt_path).endswith(".safetensors"):
        raise CheckpointError(
            f"'{ckpt_path}' is a MindSkip router file; analyse the LM it routes (its base checkpoint)"
        )
    ckpt = load_checkpoint_file(ckpt_path)
    if is_lm_checkpoint(ckpt):
        arch = (ckpt["hyper_parameters"].get("model") or {}).get("arch", "lm")
        _check_arch(job, arch, ckpt_path)
        lm, tokenizer, hp = load_pretrained_lm(ckpt_path)  # a router-tuned one is refused: analyse its base
        return arch, CausalLMTarget(lm, tokenizer, DataConfig(**hp["data"]))
    ckpt = read_unified_checkpoint(ckpt_path)
    arch = (ckpt["hyper_parameters"].get("model") or {}).get("arch", "showo")
    _check_arch(job, arch, ckpt_path)
    return arch, load_unified_module(ckpt_path)


def load_hf_for(job: str, model_cfg):
    """(arch, CausalLMTarget) for a Hugging Face directory (`model=hf_causal_lm`, no checkpoint),
    its text read with the default text data settings (data.lm_length=96, Python's docs)."""
    if model_cfg.arch != "hf":
        raise ConfigError(
            f"analyze model=... is for Hugging Face LMs (model=hf_causal_lm model.path=DIR), not "
            f"model.arch={model_cfg.arch}; analyse a modlab model from its checkpoint (ckpt_path=...)"
        )
    _check_arch(job, "hf", model_cfg.path)
    from modlab.data.config import DataConfig
    from modlab.tasks.checkpoint import build_lm

    lm, tokenizer = build_lm(model_cfg)
    return "hf", CausalLMTarget(lm.eval(), tokenizer, DataConfig(name="text"))


def lm_calibration_tasks(tasks: list[str]) -> list[str]:
    """A causal LM has one task: `lm` must be among calibration.tasks (the others are ignored)."""
    if "lm" not in tasks:
        raise ConfigError(
            f"calibration.tasks {list(tasks)} has no 'lm': a causal LM is calibrated on held-out text "
            f"(calibration.tasks=[lm])"
        )
    return ["lm"]


def analyze(cfg: DictConfig) -> dict:
    c = validate(cfg)
    job = c.analysis.job
    arch, module = load_hf_for(job, c.model) if c.model is not None else load_checkpoint_for(job, c.ckpt_path)
    import torch

    from modlab.analysis.calibration import calibration_batches
    from modlab.analysis.subject import lm_subject, showo_subject

    out = run_dir()
    torch.manual_seed(c.seed)
    start = time.perf_counter()
    cal = c.calibration
    if arch in LM_ARCHS:
        cal = replace(cal, tasks=lm_calibration_tasks(cal.tasks))
        c = replace(c, analysis=replace(c.analysis, plan=replace(c.analysis.plan, write=False)))  # NO_LM_PLAN
        batches = calibration_batches(
            module.data_cfg,
            None,
            cal.tasks,
            cal.n_per_task,
            cal.seed,
            cal.split,
            cal.batch_size,
            text_tokenizer=module.tokenizer,
        )
        subject = lm_subject(module.lm)
    else:
        batches = calibration_batches(
            module.data_cfg, module.image_tokenizer, cal.tasks, cal.n_per_task, cal.seed, cal.split, cal.batch_size
        )
        subject = showo_subject(module.model)
    with Progress() as progress:
        result = JOBS[job](c, module, subject, batches, out, progress)
    seconds = time.perf_counter() - start
    if arch in LM_ARCHS and job == "redundancy":
        result.extra.update(routing_plan=None, routing_plan_skipped=NO_LM_PLAN)
        result.notes.append(NO_LM_PLAN)

    files = []
    for name, rows in result.tables.items():
        files.append(write_csv(rows, out / f"{name}.csv").name)
    files += [p.name for p in result.plots]
    summary = {
        "job": job,
        "ckpt_path": c.ckpt_path,
        "arch": arch,
        "seconds": round(seconds, 2),
        "calibration": {**asdict(cal), "rows": {t: sum(len(b["ids"]) for b in bs) for t, bs in batches.items()}},
        "analysis": asdict(c.analysis),
        "files": files + ["results.json"],
        "results": result.tables,
        **result.extra,
    }
    if c.model is not None:
        summary["model_path"] = c.model.path
    if result.notes:
        summary["notes"] = result.notes
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_tables(result, out, seconds)
    return summary


# ---- jobs ---------------------------------------------------------------------------------------


def attention_job(c, module, subject, batches, out: Path, progress) -> JobResult:
    from modlab.analysis.attention_stats import attention_analysis
    from modlab.analysis.plots import plot_attention_maps, plot_per_layer

    advance = progress.task("attention", sum(len(b) for b in batches.values()))
    rows, maps = attention_analysis(subject, batches, advance)
    by = {(r["task"], r["layer"], r["query"]): r["to_image"] for r in rows}
    panels = {
        t: {
            f"{q} queries": [by[(t, i, q)] for i in range(subject.n_layer) if (t, i, q) in by]
            for q in ("all", "text", "image")
            if (t, 0, q) in by
        }
        for t in batches
    }
    plots = [
        plot_per_layer(
            panels,
            "attention on image tokens",
            out / "attention_fractions.png",
            "share of attention on image tokens (the rest is on text / special tokens)",
        ),
        plot_attention_maps(maps, out / "attention_maps.png"),
    ]
    even = {(r["task"], r["query"]): r["uniform_to_image"] for r in rows}
    shown = [
        (
            t,
            i,
            *[
                f"{_fmt(by.get((t, i, q)))} ({_fmt(even.get((t, q)))})" if (t, i, q) in by else "-"
                for q in ("all", "text", "image")
            ],
        )
        for t in batches
        for i in range(subject.n_layer)
    ]
    return JobResult(
        tables={"attention_fractions": rows},
        shown=[
            (
                "share of attention on image tokens (in brackets: if spread evenly over the visible keys)",
                ["task", "layer", "all queries", "text queries", "image queries"],
                shown,
            )
        ],
        plots=plots,
    )


def importance_job(c, module, subject, batches, out: Path, progress) -> JobResult:
    from modlab.analysis.importance import drop_layer_importance, llm_drop_importance
    from modlab.analysis.plots import plot_per_layer
    from modlab.analysis.showo_metrics import showo_task_metrics

    imp = c.analysis.importance
    advance = progress.task("LLM-Drop importance", sum(len(b) for b in batches.values()))
    llm = llm_drop_importance(subject, batches, advance)
    tables = {"llm_drop": llm}
    L = subject.n_layer
    val = {(r["task"], r["layer"], r["sublayer"]): r["importance"] for r in llm}
    plots = [
        plot_per_layer(
            {t: {s: [val[(t, i, s)] for i in range(L)] for s in ("attn", "mlp", "block")} for t in batches},
            "1 - cos(x, x + F(x))",
            out / "llm_drop.png",
            "LLM-Drop importance",
        )
    ]
    columns = ["layer"] + [f"{t} {s}" for t in batches for s in ("attn", "mlp")]
    rows = [[i, *[_fmt(val[(t, i, s)]) for t in batches for s in ("attn", "mlp")]] for i in range(L)]
    shown = [("LLM-Drop importance 1 - cos(x, x + F(LN(x)))", columns, rows)]
    if imp.drop_layer:
        metrics = {}
        if imp.metrics and {"mmu", "t2i"} & set(batches):  # a causal LM's metric is its perplexity (below)
            metrics = showo_task_metrics(
                module.model,
                module.space,
                module.image_tokenizer,
                module.data_cfg.split_seed,
                c.calibration.split,
                imp.mmu_prompts,
                imp.t2i_per_digit,
                imp.maskgit_steps,
                module.eval_cfg.guidance,
                imp.classifier_epochs,
                seed=c.seed,
                tasks=tuple(t for t in ("mmu", "t2i") if t in batches),
                data_cfg=module.data_cfg,
            )
        advance = progress.task("drop one layer", L + 1)
        drop = drop_layer_importance(subject, batches, metrics, seed=c.seed, advance=advance)
        drop += [
            {**r, "metric": "lm_ppl", "value": math.exp(r["value"])}
            for r in drop
            if r["task"] == "lm" and r["metric"] == "loss"
        ]
        tables["drop_layer"] = drop
        names = list(dict.fromkeys((r["task"], r["metric"]) for r in drop))
        got = {(r["dropped"], r["task"], r["metric"]): r["value"] for r in drop}
        panels = {
            f"{t} {m}": {"layer dropped": [got[(i, t, m)] for i in range(L)], "full model": [got[(-1, t, m)]] * L}
            for t, m in names
        }
        plots.append(plot_per_layer(panels, "value", out / "drop_layer.png", "drop one layer at evaluation"))
        rows = [["none" if d < 0 else d, *[_fmt(got[(d, t, m)]) for t, m in names]] for d in range(-1, L)]
        shown.append(
            (
                "drop one layer: task losses and metrics",
                ["dropped"] + [f"{t} {m}" if m == "loss" else m for t, m in names],
                rows,
            )
        )
    return JobResult(tables=tables, shown=shown, plots=plots)


def redundancy_job(c, module, subject, batches, out: Path, progress) -> JobResult:
    from modlab.analysis.arank import arank_analysis
    from modlab.analysis.importance import llm_drop_importance
    from modlab.analysis.plan_from_arank import plan_from_arank
    from modlab.analysis.plots import plot_per_layer
    from modlab.routing.plan_file import save_plan

    a, p = c.analysis.arank, c.analysis.plan
    L = subject.n_layer
    advance = progress.task(f"ARank ({a.kind})", sum(len(b) for b in batches.values()))
    rows = arank_analysis(subject, batches, a.rtol, a.kind, advance)
    val = {(r["task"], r["layer"]): r for r in rows}
    series = {k: {t: [val[(t, i)][k] for i in range(L)] for t in batches} for k in ("arank", "arank_norm")}
    plots = [
        plot_per_layer(
            {"ARank (mean rank over heads)": series["arank"], "ARank / sequence length": series["arank_norm"]},
            "rank",
            out / "arank.png",
            f"ARank, {a.kind}, rtol {a.rtol:g}",
        )
    ]
    shown_rows = [
        [i, *[f"{val[(t, i)]['arank']:.1f} / {val[(t, i)]['arank_norm']:.3f}" for t in batches]] for i in range(L)
    ]
    shown = [(f"ARank per layer ({a.kind}, rtol {a.rtol:g}): rank / rank per token", ["layer", *batches], shown_rows)]
    extra, notes = {}, []
    if p.write:
        importance = None
        if p.importance:
            imp_rows = llm_drop_importance(
                subject, batches, progress.task("LLM-Drop importance", sum(len(b) for b in batches.values()))
            )
            blocks = {(r["task"], r["layer"]): r["importance"] for r in imp_rows if r["sublayer"] == "block"}
            importance = {t: [blocks[(t, i)] for i in range(L)] for t in batches}
            extra["block_importance"] = importance
        source = {
            "ckpt_path": c.ckpt_path,
            "job": "redundancy",
            "arank_kind": a.kind,
            "rtol": a.rtol,
            "arank_norm": {t: [round(v, 4) for v in series["arank_norm"][t]] for t in batches},
            "importance": bool(p.importance),
            "calibration_rows": c.calibration.n_per_task,
        }
        plan = plan_from_arank(rows, p, module.model_cfg, module.space.vocab_size, module.data_cfg, importance, source)
        path = save_plan(plan, out / "routing_plan.yaml")
        extra["routing_plan"] = {"path": str(path), **plan.to_dict()}
        shown.append(
            (
                "routing plan",
                ["task", "routed layers", "capacity"],
                [[t, str(tp.layers), str(tp.capacity)] for t, tp in plan.tasks.items()],
            )
        )
        notes.append(f"routing plan: {path}\ntrain with it: modlab train +experiment=showo_unimod routing.plan={path}")
    return JobResult(tables={"arank": rows}, shown=shown, plots=plots, extra=extra, notes=notes)


def interactions_job(c, module, subject, batches, out: Path, progress) -> JobResult:
    from modlab.analysis.interactions import RowSampler, joint_vs_single, shared_vs_task_routers
    from modlab.analysis.plots import plot_bars, plot_per_layer
    from modlab.data.digits import load_digit_splits
    from modlab.data.rows import DigitRows, LMRows
    from modlab.data.text_corpus import load_corpus, split_corpus
    from modlab.errors import ConfigError
    from modlab.models.showo import ShowO

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
    weights, drop = module.task_cfg.loss_weights, module.task_cfg.cond_dropout

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
                        _fmt(got[(f"single:{t}", t)]),
                        _fmt(got[("joint", t)]),
                        f"{got[('joint', t)] - got[(f'single:{t}', t)]:+.4f}",
                    ]
                    for t in ic.tasks
                ],
            )
        )
        plots.append(
            plot_bars(
                {t: {"single-task": got[(f"single:{t}", t)], "joint": got[("joint", t)]} for t in ic.tasks},
                "held-out loss",
                out / "joint_training.png",
            )
        )
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
                f"tokens kept per task (capacity {ic.capacity:g}, routed layers {layers}, after {ic.router_steps} steps)",
                ["layer", "task", "shared router, init", "shared router, tuned", "task routers, tuned"],
                [
                    [
                        i,
                        t,
                        _fmt(got.get(("shared", "init", i, t))),
                        _fmt(got.get(("shared", "tuned", i, t))),
                        _fmt(got.get(("task", "tuned", i, t))),
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
                [[t, _fmt(lo.get(("shared", t))), _fmt(lo.get(("task", t)))] for t in ic.tasks],
            )
        )
        plots.append(
            plot_per_layer(
                {
                    f"{r} router{'s' if r == 'task' else ''}, tuned": {
                        t: [got[(r, "tuned", i, t)] for i in layers] for t in ic.tasks
                    }
                    for r in ("shared", "task")
                },
                "fraction of tokens kept",
                out / "router_competition.png",
                "tokens kept per task per routed layer (dashed: capacity)",
                layers=layers,
                hline=ic.capacity,
            )
        )
    return JobResult(tables=tables, shown=shown, plots=plots, notes=notes)


def dense_copy(module):
    """The checkpoint's model without its routers (routed layers unwrapped), in eval mode."""
    from modlab.cli.runtime import dense_key
    from modlab.models.showo import ShowO

    model = ShowO(module.model_cfg, module.space, module.image_tokenizer.n_tokens)
    model.load_state_dict({dense_key(k): v for k, v in module.model.state_dict().items() if ".router." not in k})
    return model.eval()


JOBS = {
    "attention": attention_job,
    "importance": importance_job,
    "redundancy": redundancy_job,
    "interactions": interactions_job,
}


# ---- output -------------------------------------------------------------------------------------


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def print_tables(result: JobResult, out: Path, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, columns, rows in result.shown:
        table = Table(title=title, header_style="bold")
        for i, col in enumerate(columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*[str(v) for v in row])
        console.print(table)
    for note in result.notes:
        console.print(note, highlight=False)
    console.print(
        f"{seconds:.1f} s; results.json, {len(result.tables)} CSV, {len(result.plots)} PNG in [bold]{out}[/bold]"
    )


class Progress:
    """A rich progress bar; `task(name, total)` returns the callable that advances it by one."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.bar.__enter__()
        return self

    def task(self, name: str, total: int):
        tid = self.bar.add_task(name, total=total)
        return lambda: self.bar.advance(tid)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
