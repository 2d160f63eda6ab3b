"""The image tokenizers of Hugging Face unified models (their VQ models) behind one interface.

A unified model sees an image as the discrete codes of its own VQ model. `ImageCodec` turns RGB
images into those codes and back, exactly as the model's processor presents an image: the image
is resized to the codec's square resolution, then the processor's own image processor rescales
and normalises it (its mean / std), and the VQ encoder quantises it; decoding runs the VQ decoder
and undoes the normalisation.

    codec.encode(images uint8 (N, R, R, 3)) -> codes long (N, h * w) in [0, n_codes)
    codec.decode(codes (N, h * w))          -> images float (N, R, R, 3) in [0, 1]
    codec.identity                          -> a hash of the VQ weights, its config and the
                                               preprocessing: what a token cache is keyed by

The VQ model is frozen (every paper trains the language model only), runs in fp32 and in eval mode.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.errors import ConfigError


class ImageCodec:
    """A frozen VQ image tokenizer at a fixed square resolution (subclasses: one per VQ family)."""

    kind = "vq"
    has_decoder = True

    def __init__(self, vq: nn.Module, image_processor, resolution: int, spatial_factor: int, n_codes: int):
        if resolution % spatial_factor:
            raise ConfigError(
                f"image resolution {resolution} is not a multiple of the VQ downsampling factor {spatial_factor}"
            )
        self.vq = vq.float().eval().requires_grad_(False)
        self.image_processor, self.resolution = image_processor, resolution
        self.grid = (resolution // spatial_factor, resolution // spatial_factor)
        self.n_codes = n_codes
        mean, std = image_processor.image_mean, image_processor.image_std
        self._mean = torch.tensor(mean if isinstance(mean, list | tuple) else [mean] * 3).view(1, 3, 1, 1)
        self._std = torch.tensor(std if isinstance(std, list | tuple) else [std] * 3).view(1, 3, 1, 1)
        self._identity: str | None = None

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def identity(self) -> str:
        """sha256 of the VQ model's config and weights and of the preprocessing (16 hex digits)."""
        if self._identity is None:
            h = hashlib.sha256()
            h.update(type(self).__name__.encode())
            h.update(json.dumps(self.vq.config.to_dict(), sort_keys=True, default=str).encode())
            h.update(json.dumps(self.image_processor.to_dict(), sort_keys=True, default=str).encode())
            h.update(str(self.resolution).encode())
            for name, t in sorted(self.vq.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().numpy().tobytes())
            self._identity = h.hexdigest()[:16]
        return self._identity

    def device(self) -> torch.device:
        return next(self.vq.parameters()).device

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, R, R, 3) -> the processor's pixel values (N, 3, R, R), float32."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.resolution, self.resolution, 3):
            raise ConfigError(
                f"the image codec takes RGB images of {self.resolution}x{self.resolution}, got shape {images.shape}"
            )
        out = self.image_processor(list(images), do_resize=False, return_tensors="pt")
        return out["pixel_values"].float()

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        codes = []
        for i in range(0, len(images), batch_size):
            pixels = self.preprocess(images[i : i + batch_size]).to(self.device())
            codes.append(self._encode(pixels).reshape(len(pixels), -1).cpu())
        return torch.cat(codes) if codes else torch.zeros(0, self.n_tokens, dtype=torch.long)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        if not self.has_decoder:
            raise ConfigError(f"{type(self).__name__}: this model's VQ tokenizer has no decoder in transformers")
        out = []
        h, w = self.grid
        for i in range(0, len(codes), batch_size):
            c = codes[i : i + batch_size].to(self.device()).long().view(-1, h, w)
            pixels = self._decode(c).float().cpu()
            if pixels.shape[-1] != self.resolution:
                pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bilinear")
            out.append((pixels * self._std + self._mean).clamp(0, 1).permute(0, 2, 3, 1))
        return torch.cat(out)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Emu3Codec(ImageCodec):
    """Emu3's VQ-VAE (Emu3VQVAE: an image is one frame repeated over its temporal window)."""

    def __init__(self, vq: nn.Module, image_processor, resolution: int):
        super().__init__(vq, image_processor, resolution, vq.vision_spatial_factor, vq.config.codebook_size)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        sizes = torch.tensor([[self.resolution, self.resolution]] * len(pixels))
        return torch.stack(self.vq.encode(pixels, sizes, return_dict=True).image_tokens)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(codes)


def digits_as_rgb(images: np.ndarray, resolution: int) -> np.ndarray:
    """modlab's 8x8 digits (grey 0..16, ink high) as uint8 RGB images of `resolution` pixels,
    dark ink on white as a photographed digit is (bilinear upsampling)."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (1.0 - x.clamp(0, 1)) * 255.0
    return x.round().to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()


def rgb_as_digits(images: torch.Tensor) -> torch.Tensor:
    """The inverse view for scoring: RGB in [0, 1] (N, R, R, 3) -> 8x8 grey digits in [0, 16]
    (N, 8, 8), what modlab's reference classifier reads."""
    grey = 1.0 - images.float().mean(-1, keepdim=True).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(grey, 8)[:, 0] * 16.0
