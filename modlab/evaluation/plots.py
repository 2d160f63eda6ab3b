"""Headless matplotlib figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_image_grid(images, row_titles: list[str], path: Path, vmax: float = 16.0) -> Path:
    """images: (rows, cols, H, W) grey images; one titled row per prompt."""
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9 + 2.2, rows * 0.9 + 0.3), squeeze=False)
    for r in range(rows):
        for col in range(cols):
            ax = axes[r][col]
            ax.imshow(images[r, col].cpu().numpy(), cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(row_titles[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_pareto_plot(points: list[dict], x_label: str, path: Path) -> Path:
    """One panel per metric: each point (`label`, `family`, cost `x`, metrics `y`) against its
    cost, with each family's Pareto front (no other point is cheaper and better) as a step line."""
    metrics = list(points[0]["y"]) if points else []
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 4.2), squeeze=False)
    families = list(dict.fromkeys(p["family"] for p in points))
    for ax, metric in zip(axes[0], metrics):
        for i, fam in enumerate(families):
            pts = sorted((p["x"], p["y"][metric], p["label"]) for p in points if p["family"] == fam)
            color = f"C{i}"
            ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], color=color, label=fam, zorder=3)
            for x, y, label in pts:
                ax.annotate(
                    label.removeprefix(fam).strip(), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
            front, best = [], -float("inf")
            for x, y, _ in pts:  # cheapest first: a point is on the front if it beats every cheaper one
                if y > best:
                    front.append((x, y))
                    best = y
            if len(front) > 1:
                ax.step([x for x, _ in front], [y for _, y in front], where="post", color=color, alpha=0.5)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs training cost (up and left is better)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
