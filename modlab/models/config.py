"""Model configuration (a plain dataclass; Hydra uses it as the `model` group's schema)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modlab.errors import ConfigError
from modlab.registry import get_family

# weights dtype of a model loaded from a directory; auto: bf16 on a CUDA device with bf16, else fp32
DTYPES = ("auto", "bfloat16", "float32")
# what each token of a Hugging Face unified model's row is (modlab.models.hf_unified): model.route_tokens
# names the kinds the routers decide for
TOKEN_KINDS = ("text", "caption", "question", "answer", "image", "special")


@dataclass
class ModelConfig:
    arch: str = "showo"  # the model family (modlab.families): showo, emu3, lm, hf, ...
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    mlp_hidden: int = 0  # 0: SwiGLU default, 8/3 * d_model rounded up to a multiple of 32
    rope_base: float = 10000.0
    dropout: float = 0.0
    # arch=lm: probability that a training row skips a layer's whole attention sublayer
    # (LayerDrop on attention): a base that learns to do without any one attention layer
    attn_layer_drop: float = 0.0
    norm_eps: float = 1e-5
    path: str | None = None  # arch=hf: a local Hugging Face model directory (the sizes above are unused)
    dtype: str = "auto"  # arch=hf: weights dtype (auto | bfloat16 | float32); see DTYPES
    # Hugging Face unified models (hf_emu3, ...): the square image size the VQ codec takes
    # (0: the processor's), and which kinds of token the routers decide for (the others always
    # run): image, caption, question, answer, text, special (modlab.models.config.TOKEN_KINDS)
    resolution: int = 0
    route_tokens: list[str] = field(default_factory=lambda: ["image"])

    def __post_init__(self) -> None:
        spec = get_family(self.arch)
        if spec.requires_path and not self.path:
            raise ConfigError(f"model.arch={self.arch} needs model.path=<a local model directory>")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype '{self.dtype}' is unknown ({', '.join(DTYPES)})")
        if self.dtype not in spec.dtypes:
            raise ConfigError(
                f"model.dtype={self.dtype} does not apply to model.arch={self.arch} ({spec.summary}): its weights "
                f"are {', '.join(spec.dtypes)} (trainer.precision sets autocast)"
            )
        for name in ("d_model", "n_layer", "n_head"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ConfigError(f"model.d_model ({self.d_model}) must split into n_head ({self.n_head}) even-sized heads")
        if self.mlp_hidden < 0:
            raise ConfigError("model.mlp_hidden must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        unknown = set(self.route_tokens) - set(TOKEN_KINDS)
        if unknown or not self.route_tokens:
            raise ConfigError(
                f"model.route_tokens {list(self.route_tokens)}: give kinds of token among {', '.join(TOKEN_KINDS)}"
            )
        if self.resolution < 0:
            raise ConfigError(f"model.resolution must be >= 0 (0: the processor's), got {self.resolution}")
        if not 0.0 <= self.attn_layer_drop < 1.0:
            raise ConfigError(f"model.attn_layer_drop must be in [0, 1), got {self.attn_layer_drop}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        h = int(8 * self.d_model / 3)
        return (h + 31) // 32 * 32
