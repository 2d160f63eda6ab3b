"""Hugging Face unified families (`hf_emu3`, `hf_showo`, `hf_chameleon`, `hf_janus`; each a
`UnifiedSpec` in the registry, modlab.registry): a transformers text +
image model from a local `save_pretrained` directory (model.path, with its processor), fine-tuned
with UniMoD task routers or MoD in its language decoder layers, evaluated on MMU answers and T2I
images (its own VQ decoder, scored on digits; Chameleon's has none in transformers, so its images
are drawn but not scored: test/t2i_skipped), generating images with causal routing and the
compact KV cache, and analysed per task. Everything the native unified families do is reused
(modlab.families.unified_family); what differs is the model (modlab.models.hf_unified,
modlab.models.hf_unified.hf_chameleon) and its data (modlab.training.hf_unified_datamodule).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch

from modlab.analysis.hf_attention import hf_attention_capture
from modlab.analysis.subject import Subject, hf_sublayers
from modlab.data import digits as D
from modlab.data.config import DataConfig
from modlab.data.hf_unified_rows import DigitImages, ImageRows, TextRows
from modlab.data.rows import collate_rows
from modlab.data.text_corpus import load_corpus, split_corpus
from modlab.data.tokens import TASKS
from modlab.errors import ConfigError
from modlab.families.model_family import AnalysisTarget, PlanSpec
from modlab.families.unified_family import UnifiedFamily
from modlab.models.hf_causal_lm import resolve_dtype
from modlab.models.hf_unified.base import pixels_of
from modlab.routing.hf_flops import planned_parts_flops_ratio
from modlab.routing.hf_routed_layer import unrouted
from modlab.training.config import EvalConfig, ObjectiveConfig
from modlab.training.trainer import test_module


class HFUnifiedFamily(UnifiedFamily):
    """Every Hugging Face unified family: one object per registered spec (`spec.unified` holds
    its parts: model class, model types, codec, layers, tiny builder, default experiment)."""

    def __init__(self, spec):
        super().__init__(spec.name, "", {"digits": spec.unified.experiment})
        self.spec = spec

    # ---- train -----------------------------------------------------------------------------------

    def build(self, run):
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.hf_unified_datamodule import HFUnifiedDataModule
        from modlab.training.hf_unified_module import HFUnifiedModule

        if run.init_from:
            raise ConfigError("init_from is for native models; a Hugging Face model's base is model.path")
        if run.data.kind != "digits":
            raise ConfigError(
                f"data.kind={run.data.kind}: Hugging Face unified models train on digits or your images "
                "(data.image_folder=DIR)"
            )

        # model.dtype=auto: bf16 weights on a CUDA device with bf16, fp32 on CPU (recorded in the checkpoint)
        run = replace(run, model=replace(run.model, dtype=resolve_dtype(run.model.dtype, run.trainer.accelerator)))
        module = HFUnifiedModule.from_run(run)
        cache = image_cache_dir(run.data, run.paths.output_dir)
        dm = HFUnifiedDataModule(run.data, run.eval, module.model, cache)
        require_rows_for_routed_tasks(module.routing_cfg, module.model.n_layer, dm.train_tasks(), run.data)
        return module, dm

    def describe(self, module) -> dict:
        m = module.model
        return {"params": m.num_params(), "vq_params": sum(p.numel() for p in m.codec.vq.parameters())}

    def dry_run(self, run) -> dict:
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.unified import probe_training_flops

        module, dm = self.build(run)
        return {**self.describe(module), **probe_training_flops(module, dm)}

    # ---- eval / generate -------------------------------------------------------------------------

    def load(self, ckpt_path: str):
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.hf_unified_module import load_hf_unified_module

        return load_hf_unified_module(ckpt_path)

    def evaluate(self, module, run, out_dir: Path) -> dict:
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.hf_unified_datamodule import HFUnifiedDataModule

        module.eval_cfg = run.eval
        data_cfg = replace(module.data_cfg, image_folder=None)  # the test is on the digits
        dm = HFUnifiedDataModule(data_cfg, run.eval, module.model, image_cache_dir(data_cfg, run.paths.output_dir))
        metrics = test_module(module, dm, run.trainer, run.logger, out_dir)
        return {**metrics, **self.describe(module), "ckpt_path": run.ckpt_path}

    # ---- analyze ---------------------------------------------------------------------------------

    def load_pretrained(self, model_cfg):
        """The directory itself (no fine-tuning yet: the paper analyses the model it prunes), with
        the training rows of this family's UniMoD experiment for the plan's FLOPs workload."""
        # Lightning only where a model is trained, tested or loaded from a Lightning checkpoint
        from modlab.training.hf_unified_module import HFUnifiedModule

        data = DataConfig(batch_size=dict(ANALYSIS_ROWS))
        module = HFUnifiedModule(asdict(model_cfg), asdict(data), asdict(ObjectiveConfig()), asdict(EvalConfig()))
        return module.eval()

    def analysis_target(self, module, calibration, seed: int) -> AnalysisTarget:
        """Per-task calibration rows in the model's own format; the decoder layers read as
        transformers runs them (a routed checkpoint is analysed unrouted: every token runs every
        layer with the fine-tuned weights). The plan routes the tasks of analysis.plan.tasks."""
        model = module.model
        batches, stats = calibration_rows(module, calibration)
        routing = model.routing

        def run(batch):
            ctx = unrouted(routing) if routing is not None else nullcontext()
            with ctx:
                b = batch
                return model(b["ids"], b["is_image"], b["valid"], b["task"], b["kind"], **pixels_of(b))

        def task_losses(batch, generator):
            ctx = unrouted(routing) if routing is not None else nullcontext()
            with ctx:  # the family's training targets in place (Show-o: masked image codes), seeded
                return model.task_losses(model.training_batch(batch, 0.0, generator))

        subject = Subject(
            model,
            model.decoder_layers(),
            run,
            task_losses,
            hf_sublayers(model.family),
            returns_stream=True,
            layer_returns_tuple=model.family.layer_returns_tuple,
            attention=partial(hf_attention_capture, model),
        )
        plan = PlanSpec(
            module.data_cfg,
            f"modlab train +experiment={self.unimod_experiments['digits']} model.path={model.path}",
            flops_ratio=partial(planned_unimod_flops_ratio, model, stats),
            exclude_layers=frozenset({0}),  # it sizes transformers' decode masks: generation needs it dense
        )
        info = {"route_tokens": list(model.route_tokens), "calibration_tokens": stats}
        if routing is not None:
            info["routed_layers_analysed"] = "unrouted: every token runs every layer"
        return AnalysisTarget(module, subject, batches, plan=plan, info=info)


def require_rows_for_routed_tasks(routing_cfg, n_layer: int, tasks: list[str], data_cfg) -> None:
    """A task with its own routers (UniMoD) must have training rows, or its routers never learn:
    e.g. routing MMU on an image folder whose captions file has no questions and answers."""
    if routing_cfg.kind != "unimod":
        return
    caps = routing_cfg.layer_capacities(n_layer)
    routed = {TASKS[j] for c in caps.values() for j, v in enumerate(c) if v < 1.0 and j < len(TASKS)}
    missing = sorted(routed - set(tasks))
    if missing:
        source = f"the image folder {data_cfg.image_folder}" if data_cfg.image_folder else "data.batch_size"
        raise ConfigError(
            f"routing routes task(s) {', '.join(missing)}, but {source} gives no {'/'.join(missing)} training rows"
            + (" (its captions file has no question / answer)" if "mmu" in missing and data_cfg.image_folder else "")
        )


def image_cache_dir(data_cfg, output_dir: str) -> str:
    """Where image codes are cached: data.image_cache, else <output_dir>/cache/image_tokens."""
    return data_cfg.image_cache or str(Path(output_dir) / "cache" / "image_tokens")


# the rows per training step the plan's FLOPs target is measured on (conf/experiment/hf_*_unimod.yaml)
ANALYSIS_ROWS = {"t2i": 8, "mmu": 8, "lm": 2}


def calibration_rows(module, c) -> tuple[dict[str, list[dict]], dict[str, dict[str, float]]]:
    """{task: [collated batch, ...]} of `c.n_per_task` rows of the digits split `c.split` (and its
    text), and per task the mean tokens per row, and of its real ones (HFUnifiedModel.real_tokens)
    those routed and those that always run (the plan's FLOPs workload)."""
    model, g = module.model, torch.Generator().manual_seed(c.seed)
    split = D.load_digit_splits(module.data_cfg.split_seed)[c.split]
    idx = torch.randperm(len(split.labels), generator=g)[: c.n_per_task]
    codes = module.image_tokenizer.encode(split.images[idx.numpy()])
    text = split_corpus(load_corpus(module.data_cfg.lm_files))[c.split].decode("utf-8", "replace")
    labels, images = split.labels[idx.numpy()], DigitImages(split.images[idx.numpy()], model.codec.resolution)
    sets = {
        "t2i": ImageRows(model, codes, "t2i", False, labels=labels),
        "mmu": ImageRows(model, codes, "mmu", False, labels=labels, images=images),  # pixels: Janus
        "lm": TextRows(model, text, module.data_cfg.lm_length, False),
    }
    batches, stats = {}, {}
    for task in c.tasks:
        rows = [sets[task][i] for i in range(min(c.n_per_task, len(sets[task])))]
        batches[task] = [collate_rows(rows[i : i + c.batch_size], model.pad) for i in range(0, len(rows), c.batch_size)]
        for b in batches[task]:  # padding inside a row (Show-o's [PAD]) is not a token the analyses may read
            b["valid"] &= model.real_tokens(b["ids"])
        real = [model.real_tokens(r["ids"]) for r in rows]
        routable = [float((~model.not_routed(r["kind"]) & v).sum()) for r, v in zip(rows, real)]
        always = [float((model.not_routed(r["kind"]) & v).sum()) for r, v in zip(rows, real)]
        stats[task] = {
            "tokens": sum(len(r["ids"]) for r in rows) / len(rows),
            "routable": sum(routable) / len(rows),
            "always": sum(always) / len(rows),
            # forward FLOPs per row outside the decoder and its head (Janus: the vision encoder)
            "outside": sum(model.extra_forward_flops(b) for b in batches[task]) / len(rows),
        }
    return batches, stats


def planned_unimod_flops_ratio(model, stats: dict, layer_caps: dict, workload: dict) -> float:
    """Training FLOPs of a UniMoD plan over the dense step's, on the transformers model: each task's
    rows (workload) of its mean length, where a planned layer runs the row's real tokens that are
    not routed plus ceil(C * routable) of the others (modlab.routing.hf_flops)."""
    parts = [
        (layer_caps.get(task, {}), rows, round(st["tokens"]), st["routable"], round(st["always"]), st["outside"])
        for task, (rows, _) in workload.items()
        for st in [stats[task]]
    ]
    return planned_parts_flops_ratio(model.hf, parts)
