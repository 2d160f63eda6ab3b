"""Headless plots of the analyses (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.colors import PowerNorm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_layer(
    panels: dict[str, dict[str, list[float]]],
    ylabel: str,
    path: Path,
    title: str = "",
    layers: list[int] | None = None,
    hline: float | None = None,
    log_panels: tuple[str, ...] | list[str] = (),
) -> Path:
    """One panel per key of `panels` (e.g. per task), one line per series over the layers
    (`layers`: their indices, default 0..n-1); `hline`: a reference level (e.g. the capacity);
    `log_panels`: panels drawn on a log y axis (a perplexity: one dropped layer at 1e7 would
    flatten every other layer to a line at zero)."""
    n_layers = max(len(v) for series in panels.values() for v in series.values())
    width = max(4.2, 0.3 * n_layers)  # room for one tick per layer (18 on Gemma 3 270M)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items()):
        xs = layers or list(range(max(len(v) for v in series.values())))
        for label, values in series.items():
            ax.plot(xs[: len(values)], values, marker="o", label=label)
        if name in log_panels:
            ax.set_yscale("log")
        if hline is not None:
            ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_bars(panels: dict[str, dict[str, float]], ylabel: str, path: Path) -> Path:
    """One panel per key (e.g. per task), one bar per entry (e.g. per training run)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4), squeeze=False)
    for ax, (name, bars) in zip(axes[0], panels.items()):
        ax.bar(range(len(bars)), list(bars.values()), color="tab:blue")
        ax.set_xticks(range(len(bars)), list(bars), rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_attention_maps(maps: dict, path: Path) -> Path:
    """maps: {task: (n_layer, T, T) mean attention}; a grid of tasks x layers (power-scaled)."""
    tasks = list(maps)
    n_layer = maps[tasks[0]].shape[0]
    fig, axes = plt.subplots(len(tasks), n_layer, figsize=(2.6 * n_layer, 2.6 * len(tasks)), squeeze=False)
    for r, task in enumerate(tasks):
        for layer in range(n_layer):
            ax = axes[r][layer]
            ax.imshow(maps[task][layer].numpy(), cmap="viridis", norm=PowerNorm(0.4, vmin=0))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{task} layer {layer}", fontsize=8)
        axes[r][0].set_ylabel("query")
    return _save(fig, path)


def plot_pareto(points: list[dict], x: str, metrics: dict[str, bool], path: Path, group: str | None = None) -> Path:
    """points: dicts with `label`, x and metric values (and `<metric>_std` for an error bar); one
    panel per metric (True: higher is better). The Pareto front (no other point is cheaper and
    better) is drawn as a step line, one per `group` value when `group` names a key (e.g. family)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 3.9), squeeze=False)
    for ax, (metric, higher_better) in zip(axes[0], metrics.items()):
        pts = [p for p in points if _finite(p.get(metric)) and _finite(p.get(x))]
        groups = list(dict.fromkeys(p.get(group) for p in pts)) if group else [None]
        for i, g in enumerate(groups):
            mine = [p for p in pts if group is None or p.get(group) == g]
            color = f"C{i}"
            for p in mine:
                ax.errorbar(p[x], p[metric], yerr=p.get(f"{metric}_std"), fmt="o", ms=5, color=color, capsize=3)
                label = str(p["label"]).removeprefix(str(g)).strip() if g is not None else p["label"]
                ax.annotate(label, (p[x], p[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front = pareto_front(mine, x, metric, higher_better)
            if len(front) > 1 or (front and group is None):
                ax.step(
                    [p[x] for p in front],
                    [p[metric] for p in front],
                    where="post",
                    color="black" if g is None else color,
                    alpha=0.5,
                    label="Pareto front" if g is None else f"{g} (Pareto front)",
                )
        if pts:
            ax.legend(fontsize=8)
        ax.set_xlabel(x)
        ax.set_ylabel(metric + (" (higher is better)" if higher_better else " (lower is better)"))
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_skip_pareto(rows: list[dict], curve: list[tuple[int, float]], path: Path) -> Path:
    """MindSkip against the static attention drop (modlab.analysis.skip_pareto): perplexity (log
    axis) against attention executions skipped per sequence; the static drop as a line, each
    routed point with its seed spread on both axes."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if curve:
        ax.plot([n for n, _ in curve], [p for _, p in curve], "s-", color="black", label="static LLM-Drop (attention)")
    for i, r in enumerate(rows):
        ax.errorbar(
            r["skipped_per_seq"],
            r["ppl"],
            xerr=r["skipped_std"] or None,
            yerr=r["ppl_std"] or None,
            fmt="o",
            color=f"C{i % 10}",
            capsize=3,
            label=f"{r['label']} (n={r['n']})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("attention executions skipped per sequence")
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")


def pareto_front(points: list[dict], x: str, metric: str, higher_better: bool) -> list[dict]:
    """Points no other point beats on both cost (x, lower is better) and metric, by cost."""
    sign = 1.0 if higher_better else -1.0
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[x], -sign * p[metric])):
        if sign * p[metric] > best:
            front.append(p)
            best = sign * p[metric]
    return front
