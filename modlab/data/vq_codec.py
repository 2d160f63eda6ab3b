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
A family's codec is named by its registry entry (modlab.registry.UnifiedSpec.codec);
`codec_for(hf_model, image_processor, resolution)` picks one by the VQ model a model holds:

    emu3       Emu3VQVAE        spatial factor 2 ** (len(channel_multiplier) - 1) (8 in Emu3)
    chameleon  ChameleonVQVAE   the same rule (16 in Chameleon); transformers has its encoder only
    janus      JanusVQVAE       the same rule (16 in Janus); quantised as the original Janus does
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
    # what the image processor is told: the images arrive square at the codec's resolution already
    processor_kwargs = {"do_resize": False}

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
        # undoing the normalisation gives pixel * rescale_factor: 1/255 for Emu3 and Janus, but
        # Chameleon's processor rescales by 0.0078 (about 1/128, onto [-1, 1] with mean = std = 1)
        self._unit = 255.0 * getattr(image_processor, "rescale_factor", 1 / 255)
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
        out = self.image_processor(list(images), return_tensors="pt", **self.processor_kwargs)
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
            out.append(((pixels * self._std + self._mean) / self._unit).clamp(0, 1).permute(0, 2, 3, 1))
        return torch.cat(out)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Emu3Codec(ImageCodec):
    """Emu3's VQ-VAE (Emu3VQVAE: an image is one frame repeated over its temporal window)."""

    vq_model_type = "emu3_vqgan"

    def __init__(self, vq: nn.Module, image_processor, resolution: int):
        super().__init__(vq, image_processor, resolution, vq.vision_spatial_factor, vq.config.codebook_size)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        sizes = torch.tensor([[self.resolution, self.resolution]] * len(pixels))
        return torch.stack(self.vq.encode(pixels, sizes, return_dict=True).image_tokens)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(codes)


def _spatial_factor(vq_config) -> int:
    """Every VQ encoder here halves the image once between two of its resolution levels."""
    return 2 ** (len(vq_config.channel_multiplier) - 1)


class ChameleonCodec(ImageCodec):
    """Chameleon's VQGAN (ChameleonVQVAE). transformers ports its encoder and quantiser only (the
    released Chameleon generates no images), so there is nothing to decode with."""

    vq_model_type = "chameleon_vqgan"
    has_decoder = False
    # Chameleon's processor also center-crops to 512 (crop_size), which pads a smaller image
    processor_kwargs = {"do_resize": False, "do_center_crop": False}

    def __init__(self, vq: nn.Module, image_processor, resolution: int):
        super().__init__(vq, image_processor, resolution, _spatial_factor(vq.config), vq.config.num_embeddings)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        # the quantiser returns one flat index per latent position, row-major over (N, h, w)
        return self.vq.encode(pixels, return_dict=True).image_tokens.view(len(pixels), *self.grid)


class JanusCodec(ImageCodec):
    """Janus's VQ tokenizer (JanusVQVAE, LlamaGen's VQ-16).

    Quantised as the original Janus does (deepseek-ai/Janus, janus/models/vq_model.py, with
    codebook_l2_norm=True): the nearest codebook vector after l2-normalising both the latent and
    the codebook. transformers' JanusVQVAE.encode skips that normalisation (its decode applies it),
    which picks other codes whenever the stored codebook rows differ in norm. Decoding looks the
    codes up at the codec's own grid; JanusVQVAE.decode insists on config.num_patches per side."""

    vq_model_type = "janus_vqgan"

    def __init__(self, vq: nn.Module, image_processor, resolution: int):
        super().__init__(vq, image_processor, resolution, _spatial_factor(vq.config), vq.config.num_embeddings)

    def _codebook(self) -> torch.Tensor:
        return F.normalize(self.vq.quantize.embedding.weight, p=2, dim=-1)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.vq.quant_conv(self.vq.encoder(pixels))  # (N, embed_dim, h, w)
        z = F.normalize(z.permute(0, 2, 3, 1), p=2, dim=-1)
        # between unit vectors the nearest is the most similar: argmin |z - e|^2 = argmax z . e
        return (z @ self._codebook().T).argmax(-1)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        quant = self._codebook()[codes].permute(0, 3, 1, 2)  # (N, embed_dim, h, w)
        return self.vq.decoder(self.vq.post_quant_conv(quant))


CODECS = (Emu3Codec, ChameleonCodec, JanusCodec)


def vq_model(hf_model: nn.Module) -> nn.Module:
    """The VQ model of a transformers unified model (the ForConditionalGeneration model or its inner
    model), or the model itself when it is a VQ model alone."""
    for holder in (hf_model, getattr(hf_model, "model", None)):
        vq = getattr(holder, "vqmodel", None)
        if vq is not None:
            return vq
    return hf_model


def codec_for(hf_model: nn.Module, image_processor, resolution: int) -> ImageCodec:
    """The codec of a VQ model, or of the unified model that holds one (Emu3, Chameleon, Janus), by
    the VQ model it wraps (each codec class names its `vq_model_type`); a loaded family takes its
    codec from its registry entry instead (UnifiedSpec.codec). `image_processor` may be the whole
    processor."""
    vq = vq_model(hf_model)
    vq_type = getattr(getattr(vq, "config", None), "model_type", None)
    codec = next((c for c in CODECS if c.vq_model_type == vq_type), None)
    if codec is None:
        known = ", ".join(c.vq_model_type for c in CODECS)
        raise ConfigError(f"no image codec for transformers model type {vq_type!r} (VQ models: {known})")
    return codec(vq, getattr(image_processor, "image_processor", image_processor), resolution)


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
