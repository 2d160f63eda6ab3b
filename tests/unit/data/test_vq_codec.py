"""The VQ image codecs of Emu3, Chameleon and Janus on tiny random VQ models built from their config
classes (32x32 images, three resolution levels: an 8x8 code grid)."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    ChameleonImageProcessor,
    ChameleonVQVAEConfig,
    Emu3ImageProcessor,
    Emu3VQVAEConfig,
    JanusImageProcessor,
    JanusVQVAEConfig,
)
from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE  # noqa: E402
from transformers.models.emu3.modeling_emu3 import Emu3VQVAE  # noqa: E402
from transformers.models.janus.modeling_janus import JanusVQVAE  # noqa: E402

from modlab.data.vq_codec import ChameleonCodec, Emu3Codec, ImageCodec, JanusCodec, codec_for  # noqa: E402
from modlab.errors import ConfigError  # noqa: E402

R, N_CODES = 32, 32
# GroupNorm(32) everywhere: every channel count a multiple of 32
SMALL = dict(base_channels=32, channel_multiplier=[1, 2, 2], num_res_blocks=1)


def emu3_vq() -> Emu3VQVAE:
    cfg = Emu3VQVAEConfig(
        codebook_size=N_CODES, embed_dim=8, latent_channels=8, attn_resolutions=[], hidden_size=64,
        num_attention_heads=1, temporal_downsample_factor=1, **SMALL,
    )  # fmt: skip
    return Emu3VQVAE(cfg)


def chameleon_vq_config() -> dict:
    return dict(embed_dim=8, num_embeddings=N_CODES, latent_channels=8, resolution=R, attn_resolutions=[], **SMALL)


def janus_vq() -> JanusVQVAE:
    cfg = JanusVQVAEConfig(
        embed_dim=8, num_embeddings=N_CODES, latent_channels=8, num_patches=R // 4, projection_dim=16,
        image_token_embed_dim=16, **SMALL,
    )  # fmt: skip
    return JanusVQVAE(cfg)


def processor(family: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torchvision not installed: the PIL backend"
        if family == "emu3":
            return Emu3ImageProcessor(
                min_pixels=R * R, max_pixels=R * R, spatial_factor=4, image_mean=[0.5] * 3, image_std=[0.5] * 3
            )
        if family == "chameleon":
            return ChameleonImageProcessor()  # its own defaults: rescale 0.0078, mean = std = 1, crop 512
        return JanusImageProcessor(size={"height": R, "width": R}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


BUILD = {"emu3": emu3_vq, "chameleon": lambda: ChameleonVQVAE(ChameleonVQVAEConfig(**chameleon_vq_config())),
         "janus": janus_vq}  # fmt: skip
CODEC = {"emu3": Emu3Codec, "chameleon": ChameleonCodec, "janus": JanusCodec}


def make(family: str, seed: int = 0, resolution: int = R) -> ImageCodec:
    torch.manual_seed(seed)
    return CODEC[family](BUILD[family](), processor(family), resolution)


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, R, R, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", ["emu3", "chameleon", "janus"])
def test_codes_have_the_grid_shape_and_lie_in_the_codebook(family):
    codec = make(family)
    assert codec.grid == (8, 8) and codec.n_tokens == 64 and codec.n_codes == N_CODES
    codes = codec.encode(images())
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < N_CODES
    assert codes.unique().numel() > 1  # the quantiser really looks at the pixels


@pytest.mark.parametrize("family", ["emu3", "chameleon", "janus"])
def test_encode_is_deterministic_and_independent_of_the_batch(family):
    codec, x = make(family), images(4)
    a = codec.encode(x)
    assert torch.equal(a, codec.encode(x))
    assert torch.equal(a, codec.encode(x, batch_size=1))


@pytest.mark.parametrize("family", ["emu3", "janus"])
def test_decode_gives_images_in_the_unit_range(family):
    codec = make(family)
    out = codec.decode(codec.encode(images()))
    assert out.shape == (3, R, R, 3) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out.std()) > 0


@pytest.mark.parametrize("family", ["emu3", "chameleon", "janus"])
def test_identity_is_stable_for_the_same_weights_and_changes_with_one_weight(family):
    a, b = make(family, seed=0), make(family, seed=0)
    assert a.vq is not b.vq and a.identity == b.identity and len(a.identity) == 16
    vq = copy.deepcopy(a.vq)
    with torch.no_grad():
        next(vq.parameters()).view(-1)[0] += 1e-3
    changed = CODEC[family](vq, processor(family), R)
    assert changed.identity != a.identity
    assert make(family, seed=1).identity != a.identity


def test_chameleon_has_no_decoder_in_transformers():
    codec = make("chameleon")
    assert not codec.has_decoder and not hasattr(codec.vq, "decoder")
    with pytest.raises(ConfigError, match="no decoder") as err:
        codec.decode(codec.encode(images(1)))
    assert "\n" not in str(err.value)


def test_chameleon_pixels_are_not_center_cropped_to_512():
    """Its processor crops to crop_size = 512 by default, which would pad a 32-pixel image."""
    pixels = make("chameleon").preprocess(images(2))
    assert pixels.shape == (2, 3, R, R)
    assert -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0  # x * 0.0078 - 1


def test_emu3_codes_are_what_the_vq_model_gives():
    codec, x = make("emu3"), images()
    pixels = codec.preprocess(x)
    sizes = torch.tensor([[R, R]] * len(x))
    expected = torch.stack(codec.vq.encode(pixels, sizes, return_dict=True).image_tokens).view(len(x), -1)
    assert torch.equal(codec.encode(x), expected)


def test_janus_quantises_with_l2_normalised_codebook_like_the_original():
    """Rescaling codebook rows leaves the l2-normalised quantiser (the original Janus's) unchanged;
    transformers' JanusVQVAE.encode, which skips the normalisation, changes its codes."""
    codec, x = make("janus"), images()
    codes = codec.encode(x)
    hf_before = codec.vq.encode(codec.preprocess(x)).image_tokens
    with torch.no_grad():
        emb = codec.vq.quantize.embedding.weight
        emb.mul_(torch.linspace(0.2, 5.0, len(emb))[:, None])
    assert torch.equal(codec.encode(x), codes)
    assert not torch.equal(codec.vq.encode(codec.preprocess(x)).image_tokens, hf_before)


def test_janus_decode_matches_transformers_at_its_grid_and_works_at_another():
    codec = make("janus")
    codes = codec.encode(images())
    grid = codes.view(-1, *codec.grid)
    torch.testing.assert_close(codec._decode(grid), codec.vq.decode(codes))
    small = JanusCodec(codec.vq, processor("janus"), 16)  # a 4x4 grid, not config.num_patches = 8
    x16 = images()[:, :16, :16]
    assert small.grid == (4, 4) and small.decode(small.encode(x16)).shape == (3, 16, 16, 3)


def test_codec_for_picks_the_codec_by_model_type():
    torch.manual_seed(0)
    cfg = ChameleonConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vq_config=chameleon_vq_config(), vocabulary_map={"<image>": 3},
    )  # fmt: skip
    model = ChameleonForConditionalGeneration(cfg)
    codec = codec_for(model, processor("chameleon"), R)
    assert isinstance(codec, ChameleonCodec) and codec.vq is model.model.vqmodel
    # the VQ model alone, and a whole processor (its image processor is used)
    janus = janus_vq()
    codec = codec_for(janus, SimpleNamespace(image_processor=processor("janus")), R)
    assert isinstance(codec, JanusCodec) and codec.vq is janus
    assert isinstance(codec_for(emu3_vq(), processor("emu3"), R), Emu3Codec)


def test_codec_for_an_unknown_model_is_a_one_line_error():
    with pytest.raises(ConfigError, match="no image codec for transformers model type 'llama'") as err:
        codec_for(SimpleNamespace(config=SimpleNamespace(model_type="llama")), processor("emu3"), R)
    assert "\n" not in str(err.value)


def test_a_resolution_off_the_downsampling_factor_is_refused():
    with pytest.raises(ConfigError, match="multiple of the VQ downsampling factor 4"):
        make("janus", resolution=30)
