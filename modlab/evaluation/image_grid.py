"""Headless matplotlib figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_image_grid(images, row_titles: list[str], path: Path, vmax: float = 16.0) -> Path:
    """images: (rows, cols, H, W) grey images in [0, vmax], or (rows, cols, H, W, 3) RGB in [0, 1];
    one titled row per prompt."""
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9 + 2.2, rows * 0.9 + 0.3), squeeze=False)
    for r in range(rows):
        for col in range(cols):
            ax = axes[r][col]
            image = images[r, col].cpu().numpy()
            if image.ndim == 3:  # RGB
                ax.imshow(image.clip(0, 1), interpolation="nearest")
            else:
                ax.imshow(image, cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(row_titles[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
