"""A stand-in for Show-o's image tokenizer: modlab's patch k-means codebook on RGB patches.

Show-o tokenizes images with MAGVIT-v2 (a lookup-free quantiser, 8192 codes, 16x16 codes per
256x256 image), which is not in transformers and whose weights cannot be fetched here. A `hf_showo`
model directory therefore carries this stand-in instead: modlab's own PatchCodebook
(modlab.data.image_tokenizer) fitted by k-means on the non-overlapping p x p RGB patches of the
training images at the codec's resolution, one code per patch. It is a VQ tokenizer in the sense
the rest of modlab needs (images <-> codes of a fixed grid, frozen, with an identity), but a crude
one: a code is the nearest mean patch, nothing is learned end to end, and its reconstructions are
blocky. Results with it say how routing behaves on Show-o's backbone and token layout, not how
well Show-o's own tokenizer reconstructs images.

The codebook is one small safetensors file in the model directory (SHOWO_CODEBOOK_FILE): the
centroids (n_codes, p * p * 3), in pixel units 0..255, and the resolution and patch size in its
metadata. The codec's identity (what cached image codes and checkpoints are keyed by) is the
sha256 of that file's bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save

from modlab.data.image_tokenizer import PatchCodebook
from modlab.data.vq_codec import ImageCodec
from modlab.errors import CheckpointError, ConfigError

SHOWO_CODEBOOK_FILE = "showo_image_codebook.safetensors"


class PatchCodebookVQ(nn.Module):
    """The codebook as a frozen module, so that the codec's `vq` is a module like every VQ model's
    (eval mode, device, parameter count); its only weights are the centroids."""

    def __init__(self, centroids: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.float().clone(), requires_grad=False)


class PatchCodebookCodec(ImageCodec):
    """Show-o's image tokenizer stand-in (see the module docstring)."""

    kind = "patch_kmeans"

    def __init__(self, centroids: torch.Tensor, resolution: int, patch: int):
        # ImageCodec's own __init__ reads a transformers image processor; there is none here
        if patch < 1 or resolution % patch:
            raise ConfigError(f"the codebook's patch {patch} must divide its image resolution {resolution}")
        if centroids.dim() != 2 or centroids.shape[1] != patch * patch * 3:
            raise ConfigError(
                f"codebook centroids must be (n_codes, {patch * patch * 3}), got {tuple(centroids.shape)}"
            )
        self.vq = PatchCodebookVQ(centroids).eval()
        self.image_processor, self.resolution, self.patch = None, resolution, patch
        self.grid = (resolution // patch, resolution // patch)
        self.n_codes = int(centroids.shape[0])
        self._codebook = PatchCodebook(self.n_codes, patch, resolution)
        self._codebook.centroids = self.vq.centroids.data  # shares the module's storage
        self._identity: str | None = None

    # ---- fitting and the file ---------------------------------------------------------------

    @classmethod
    def fit(cls, images: np.ndarray, n_codes: int, patch: int, seed: int = 0) -> PatchCodebookCodec:
        """k-means over the p x p patches of uint8 RGB images (N, R, R, 3) at the codec's resolution."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise ConfigError(f"the codebook is fitted on square RGB images (N, R, R, 3), got shape {images.shape}")
        book = PatchCodebook(n_codes, patch, images.shape[1], seed=seed).fit(images)
        return cls(book.centroids, images.shape[1], patch)

    def to_bytes(self) -> bytes:
        meta = {"format": "modlab-patch-kmeans", "resolution": str(self.resolution), "patch": str(self.patch)}
        return save({"centroids": self.vq.centroids.detach().cpu().contiguous()}, metadata=meta)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SHOWO_CODEBOOK_FILE
        data = self.to_bytes()
        path.write_bytes(data)
        self._identity = _digest(data)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PatchCodebookCodec:
        """The codec of a codebook file; a missing or unreadable file is one CheckpointError line."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"the Show-o image codebook '{path}' does not exist")
        data = path.read_bytes()
        try:
            with safe_open(str(path), "pt") as f:
                centroids, meta = f.get_tensor("centroids"), f.metadata() or {}
            resolution, patch = int(meta["resolution"]), int(meta["patch"])
        except Exception as e:  # unreadable in any of the ways a file can be: one line
            raise CheckpointError(
                f"the Show-o image codebook '{path}' could not be read ({type(e).__name__})"
            ) from None
        codec = cls(centroids, resolution, patch)
        codec._identity = _digest(data)
        return codec

    # ---- the ImageCodec interface ---------------------------------------------------------------

    @property
    def identity(self) -> str:
        """sha256 of the codebook file's bytes (16 hex digits)."""
        if self._identity is None:
            self._identity = _digest(self.to_bytes())
        return self._identity

    def _check(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.resolution, self.resolution, 3):
            raise ConfigError(
                f"the image codec takes RGB images of {self.resolution}x{self.resolution}, got shape {images.shape}"
            )
        return images

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        images = self._check(images)
        codes = [self._codebook.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat(codes).long() if codes else torch.zeros(0, self.n_tokens, dtype=torch.long)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """RGB in [0, 1], (N, R, R, 3): each code's mean patch."""
        codes = torch.as_tensor(codes).long().cpu().reshape(len(codes), self.n_tokens)
        return (self._codebook.decode(codes) / 255.0).clamp(0, 1)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
