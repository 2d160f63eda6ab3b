"""lm-evaluation-harness (`pip install 'modlab[harness]'`) on a modlab causal LM: the base and the
routed model of a checkpoint each wrapped as an lm-eval `LM`, evaluated on the same tasks, their
scores side by side (the benchmark the Router-Tuning paper reports).

`modlab eval ckpt_path=... harness.tasks=[boolq,piqa]` (tasks lm-eval knows, or your own task
YAML files under `harness.include_path=DIR`). What the variants are:

- a token-routed (MoD) model: `routed` is the causal (threshold) routing decoding uses, `base` the
  same weights with every token running every layer;
- a MindSkip (Router-Tuning) model: `routed` with its attention gates, `base` with every gate open
  (the untouched pretrained model);
- an unrouted model: `base` alone.

The wrapper implements the three request types on top of one function, logits(ids, valid):
loglikelihood (context + continuation in one forward, the continuation scored, greedy or not),
loglikelihood_rolling (disjoint windows of the model's maximum length, lm-eval's own window
helpers) and generate_until (greedy, recomputing the prefix each new token: correct for any
routing whose decision is causal, not fast). Requests run one at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from modlab.errors import ConfigError
from modlab.evaluation.harness_config import HarnessConfig

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # ids (1, T) -> logits (1, T, vocab)


def _lm_eval():
    try:
        # lm-eval is optional (modlab[harness]): imported when harness tasks run
        import lm_eval
        from lm_eval.api.model import LM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("harness.tasks needs lm-evaluation-harness: pip install 'modlab[harness]'") from None
    return lm_eval, LM, TaskManager


def task_manager(cfg: HarnessConfig):
    """lm-eval's task index (with harness.include_path); an unknown task is a one-line ConfigError."""
    _, _, TaskManager = _lm_eval()
    tm = TaskManager(include_path=cfg.include_path) if cfg.include_path else TaskManager()
    unknown = [t for t in cfg.tasks if t not in tm.all_tasks]
    if unknown:
        where = f" or in harness.include_path={cfg.include_path}" if cfg.include_path else ""
        raise ConfigError(
            f"harness.tasks: lm-eval knows no task {', '.join(repr(t) for t in unknown)}{where} "
            "(`lm_eval ls tasks` lists them; your own task YAML files go in harness.include_path=DIR)"
        )
    return tm


def harness_lm(logits: LogitsFn, tokenizer, cfg: HarnessConfig, device="cpu"):
    """An lm-eval `LM` over a logits function and a modlab text tokenizer (bytes or HF)."""
    _, LM, _ = _lm_eval()
    # lm-eval is optional (modlab[harness]): imported when harness tasks run
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    eos = getattr(getattr(tokenizer, "tok", None), "eos_token_id", None)
    prefix = eos if isinstance(eos, int) else tokenizer.encode("\n")[0]  # what an empty context starts from

    class ModlabLM(LM):
        def _logprobs(self, tokens: list[int]) -> torch.Tensor:
            ids = torch.tensor(tokens[-(cfg.max_length + 1) :][:-1], device=device)[None]
            with torch.no_grad():
                return F.log_softmax(logits(ids)[0].float(), -1)

        def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
            logp = self._logprobs(context + continuation)[-len(continuation) :]
            target = torch.tensor(continuation, device=logp.device)
            greedy = bool((logp.argmax(-1) == target).all())
            return float(logp.gather(1, target[:, None]).sum()), greedy

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            out = []
            for r in requests:
                context, continuation = r.args
                n_space = len(context) - len(context.rstrip())  # the space belongs to the continuation
                if n_space:
                    context, continuation = context[:-n_space], context[-n_space:] + continuation
                whole = tokenizer.encode(context + continuation)
                ctx = tokenizer.encode(context) if context else []
                cont = whole[len(ctx) :]
                out.append(self._score(ctx or [prefix], cont))
            return out

        def loglikelihood_rolling(self, requests) -> list[float]:
            out = []
            for r in requests:
                (text,) = r.args
                windows = get_rolling_token_windows(tokenizer.encode(text), prefix, cfg.max_length, 1)
                out.append(sum(self._score(*make_disjoint_window(w))[0] for w in windows))
            return out

        def generate_until(self, requests) -> list[str]:
            out = []
            for r in requests:
                context, gen_kwargs = r.args
                until = gen_kwargs.get("until", [])
                until = [until] if isinstance(until, str) else list(until)
                tokens = tokenizer.encode(context) or [prefix]
                new: list[int] = []
                for _ in range(int(gen_kwargs.get("max_gen_toks", cfg.max_gen_toks))):
                    nxt = int(self._logprobs(tokens + new + [0])[-1].argmax())
                    if isinstance(eos, int) and nxt == eos:
                        break
                    new.append(nxt)
                    text = tokenizer.decode(new)
                    if any(u in text for u in until):
                        break
                text = tokenizer.decode(new)
                for u in until:
                    text = text.split(u)[0]
                out.append(text)
            return out

    return ModlabLM()


def run_harness(variants: dict[str, LogitsFn], tokenizer, cfg: HarnessConfig, tm=None, device="cpu") -> dict:
    """{`harness/<task>/<metric>_<variant>`: score} for every task, metric and variant, and the
    same for the routed - base difference."""
    lm_eval, _, _ = _lm_eval()
    tm = tm or task_manager(cfg)
    metrics: dict = {}
    scores: dict[str, dict[str, float]] = {}
    for name, fn in variants.items():
        result = lm_eval.simple_evaluate(
            model=harness_lm(fn, tokenizer, cfg, device),
            tasks=list(cfg.tasks),
            task_manager=tm,
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit or None,
            bootstrap_iters=0,
            log_samples=False,
        )
        for task, values in result["results"].items():
            for key, value in values.items():
                metric, _, filt = key.partition(",")
                if isinstance(value, (int, float)) and not metric.endswith("_stderr") and filt:
                    label = metric if filt == "none" else f"{metric}_{filt}"
                    scores.setdefault(f"harness/{task}/{label}", {})[name] = float(value)
    for key, by_variant in scores.items():
        for name, value in by_variant.items():
            metrics[f"{key}_{name}"] = value
        if {"base", "routed"} <= set(by_variant):
            metrics[f"{key}_delta"] = by_variant["routed"] - by_variant["base"]
    return metrics


def side_by_side(metrics: dict) -> list[tuple[str, str, str, str]]:
    """(task / metric, base, routed, routed - base) rows of run_harness's metrics, for a table."""
    rows = {}
    for key, value in metrics.items():
        if key.startswith("harness/"):
            stem, _, variant = key.rpartition("_")
            rows.setdefault(stem.removeprefix("harness/"), {})[variant] = value
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    return [(k, fmt(v.get("base")), fmt(v.get("routed")), fmt(v.get("delta"))) for k, v in sorted(rows.items())]


def print_harness_table(scores: dict) -> None:
    """The rich table of base vs routed scores per task and metric."""
    table = Table(title="lm-evaluation-harness: base vs routed")
    for col in ("task / metric", "base", "routed", "routed - base"):
        table.add_column(col, justify="left" if col.startswith("task") else "right")
    for row in side_by_side(scores):
        table.add_row(*row)
    Console().print(table)
