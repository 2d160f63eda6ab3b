"""Image tokenizers: 8x8 grey images (values 0..16) <-> discrete codes.

- `PixelQuantizer`: one token per pixel, `levels` grey levels (17 = lossless for `load_digits`).
- `PatchCodebook`: a learned k-means codebook over non-overlapping p x p patches (the realistic
  VQ-style variant: fewer, richer tokens). Images may carry a trailing channel axis (N, S, S, C),
  e.g. RGB: a patch is then its p x p x C values (modlab.data.showo_codec's stand-in VQ).

Both share `encode(images) -> codes (N, n_tokens)` and `decode(codes) -> images (N, 8, 8)`.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_PIXEL = 16.0


class PixelQuantizer:
    kind = "pixel"

    def __init__(self, levels: int = 17, image_size: int = 8):
        if levels < 2:
            raise ValueError("levels must be >= 2")
        self.levels = levels
        self.image_size = image_size

    @property
    def n_codes(self) -> int:
        return self.levels

    @property
    def n_tokens(self) -> int:
        return self.image_size * self.image_size

    def fit(self, images: np.ndarray) -> PixelQuantizer:
        return self

    def encode(self, images) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32).reshape(len(images), -1)
        return torch.round(x / MAX_PIXEL * (self.levels - 1)).clamp(0, self.levels - 1).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes.float() * MAX_PIXEL / (self.levels - 1)
        return x.reshape(-1, self.image_size, self.image_size)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "levels": self.levels, "image_size": self.image_size}


class PatchCodebook:
    kind = "patch_kmeans"

    def __init__(self, codebook_size: int = 64, patch: int = 2, image_size: int = 8, seed: int = 0):
        if image_size % patch:
            raise ValueError("patch must divide the image size")
        self.codebook_size = codebook_size
        self.patch = patch
        self.image_size = image_size
        self.seed = seed
        self.centroids: torch.Tensor | None = None  # (K, patch*patch)

    @property
    def n_codes(self) -> int:
        return self.codebook_size

    @property
    def n_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    def _patches(self, images) -> torch.Tensor:
        """(N, patches, p*p*C) in raster order, for images of any side divisible by the patch
        (a codebook fitted on 8x8 digits encodes scenes made of them); grey (N, S, S): C = 1."""
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if x.dim() == 3:
            x = x[..., None]
        n, p, g, c = len(x), self.patch, x.shape[1] // self.patch, x.shape[-1]
        x = x.reshape(n, g, p, g, p, c).permute(0, 1, 3, 2, 4, 5)  # (n, gy, gx, p, p, c)
        return x.reshape(n, g * g, p * p * c)

    def fit(self, images: np.ndarray) -> PatchCodebook:
        # scikit-learn / SciPy take a second to import: only when this runs
        from sklearn.cluster import KMeans

        patches = self._patches(images)
        patches = patches.reshape(-1, patches.shape[-1]).numpy()
        km = KMeans(n_clusters=self.codebook_size, n_init=4, random_state=self.seed).fit(patches)
        self.centroids = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        return self

    def encode(self, images) -> torch.Tensor:
        if self.centroids is None:
            raise RuntimeError("PatchCodebook.encode before fit")
        patches = self._patches(images)
        dist = torch.cdist(patches, self.centroids.expand(len(patches), -1, -1))
        return dist.argmin(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, S, S) grey images, or (N, S, S, C) for a codebook fitted on C channels."""
        n, p, g = codes.shape[0], self.patch, self.image_size // self.patch
        c = self.centroids.shape[1] // (p * p)
        x = self.centroids[codes.cpu()].reshape(n, g, g, p, p, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(n, self.image_size, self.image_size, c)
        return x[..., 0] if c == 1 else x

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "codebook_size": self.codebook_size,
            "patch": self.patch,
            "image_size": self.image_size,
            "seed": self.seed,
            "centroids": self.centroids,
        }


def build_image_tokenizer(
    kind: str, levels: int = 17, codebook_size: int = 64, patch: int = 2, seed: int = 0, image_size: int = 8
):
    if kind == "pixel":
        return PixelQuantizer(levels=levels, image_size=image_size)
    if kind == "patch_kmeans":
        return PatchCodebook(codebook_size=codebook_size, patch=patch, image_size=image_size, seed=seed)
    raise ValueError(f"unknown image tokenizer '{kind}' (pixel, patch_kmeans)")


def image_tokenizer_from_state(state: dict):
    state = dict(state)
    kind = state.pop("kind")
    if kind == "pixel":
        return PixelQuantizer(**state)
    centroids = state.pop("centroids")
    tok = PatchCodebook(**state)
    tok.centroids = torch.as_tensor(centroids)
    return tok
