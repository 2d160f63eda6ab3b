"""Show-o (Xie et al. 2024, arXiv 2408.12528) on its real backbone: transformers' PhiForCausalLM.

Show-o is not in transformers. Its public code (github.com/showlab/Show-o, read at commit 45a5a2d)
is Phi-1.5 with a longer vocabulary and an omni-attention mask; everything below was read off it.

Backbone (models/modeling_showo.py, models/phi.py)
    `Showo.showo` is a PhiForCausalLM built from microsoft/phi-1_5's config and resized with
    `resize_token_embeddings(vocab_size)` (transformers 4.41.1 in requirements.txt: new rows drawn
    from N(0, initializer_range), i.e. mean_resizing=False here). Its own copy of Phi forces
    `config.qk_layernorm = True` (a LayerNorm over head_dim on queries and keys, absent from
    Phi-1.5 itself) and `use_cache = False`. Positions are 0..T-1 over the whole row, padding
    included. No other module: no separate image head, no `mlm_layer`, no extra position
    embedding (`mlm_ln.weight` in train.py's no-decay list is a leftover). Only the CLIP-ViT
    variant (`w_clip_vit`) adds `mm_projector` (Linear 1024->2048, GELU, Linear 2048->2048).

Checkpoint (models/modeling_utils.py: a diffusers-style ModelMixin; pytorch_model.bin or
pytorch_model.safetensors): the keys are `showo.` + Phi's names, e.g.
    showo.model.embed_tokens.weight                         (58498, 2048)
    showo.model.layers.{i}.self_attn.{q_proj,k_proj,v_proj,dense}.{weight,bias}
    showo.model.layers.{i}.self_attn.{q,k}_layernorm.{weight,bias}
    showo.model.layers.{i}.mlp.{fc1,fc2}.{weight,bias}, showo.model.layers.{i}.input_layernorm.*
    showo.model.final_layernorm.{weight,bias}, showo.lm_head.{weight,bias}  (untied; with bias)
  RoPE's inv_freq is a non-persistent buffer (not stored). transformers 5.24's PhiForCausalLM has
  exactly these names without the prefix.

Vocabulary (training/prompting_utils.py UniversalPrompting; configs/showo_demo*.yaml; the ids
printed in github.com/showlab/Show-o/issues/94)
    [0, 50295)        Phi-1.5's tokenizer (llm_vocab_size = len(tokenizer) = 50295);
                      <|sot|> = <|eot|> = <|endoftext|> = 50256 (bos = eos in Phi's tokenizer)
    50295             [PAD]  (add_special_tokens({'pad_token': '[PAD]'}) comes first)
    50296 .. 50304    <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>
                      (num_new_special_tokens = 10 with [PAD])
    50305 .. 58496    the 8192 MAGVIT-v2 codes: id = code + len(tokenizer) (train.py)
    58497             [MASK] = vocab_size - 1 (Showo.__init__: mask_token_id); vocab_size = 58498
  256 image tokens per 256x256 image (showo_demo.yaml), 1024 at 512x512 (showo_demo_512x512.yaml).

Rows (UniversalPrompting.t2i_prompt / mmu_prompt / lm_prompt; inference_mmu.py)
    T2I  [PAD]... [t2i] [sot] caption [eot] [soi] image [eoi]   text field left-padded to
         max_seq_length + 1 (128 + 1), so the image starts at a fixed position
    MMU  [mmu] [soi] image [eoi] [sot] text [eot] [PAD]...       right-padded; inference prompts
         are [mmu][soi] image [eoi][sot] "USER: \\n" question " ASSISTANT:", decoded to <|eot|>
    LM   [sot] text [eot] [PAD]...
  Caption dropout (cond_dropout_prob 0.1): the T2I caption becomes empty: [PAD]... [t2i][sot][eot].

Omni-attention (prompting_utils.create_attention_mask_predict_next with rm_pad_in_image=True for
T2I, create_attention_mask_for_mmu for MMU; additive float masks, 0 / very negative)
    text is causal; the image segment [soi] image [eoi] sees every non-padding token of its row
    (bidirectional among itself); in MMU every query sees all of [mmu] [soi] image [eoi]; nobody
    sees padding. modlab.models.omni_attention's rule gives exactly this when the bidirectional
    block is the segment [soi]..[eoi] (plus [mmu] in understanding rows): `showo_attention_blocks`.

MaskGIT training (training/utils.py mask_or_random_replace_tokens; configs/showo_pretraining_*)
    per T2I row t ~ U(0, 1), mask ratio cos(pi t / 2) (mask_schedule "cosine", min_masking_rate
    0), round(n * ratio) codes (at least 1) masked uniformly at random (noise_type "mask"); labels
    are the codes at masked positions, -100 elsewhere; the loss is unshifted (position i predicts
    its own token). Quirk not reproduced: t2i_prompt also labels [soi] and [eoi] with themselves and
    the loss slice includes them (an identity); here the T2I loss is on masked codes only.
Losses (Showo.forward; train.py): mean token cross-entropy per task over the labelled tokens, t2i
    on masked codes, lm and mmu next-token (mmu on the text after the image); total =
    t2i_coeff 1.0 * t2i + lm_coeff 0.1 * lm + mmu_coeff 1.0 * mmu (every pretraining and
    instruction-tuning config); label_smoothing 0.
Sampling (Showo.t2i_generate, models/sampling.py): MaskGIT from an all-[MASK] image, logits of
    the codebook columns only (the [MASK] column dropped), samples drawn from softmax(logits);
    after step s (ratio r = (s+1)/steps) floor(n cos(pi r / 2)) tokens stay masked, clamped to
    [1, unknown - 1]; the re-masked ones are the lowest log p + temperature_s * Gumbel, where the
    loop reassigns temperature *= (1 - r) every step (so the noise anneals multiplicatively);
    the result is the last step's samples. Classifier-free guidance: one batch of the conditional
    rows and the empty-caption rows (same length), logits (1 + g) cond - g uncond. Defaults: 18
    steps in t2i_generate's signature, 12 in the training configs' validation, README demos 50
    steps guidance 5 (512x512) and 16 steps guidance 1.75 (inpainting).

Rows here are modlab's row dicts (modlab.data.rows: ids, labels with labels[i] = the token
position i predicts, is_image on the image codes, cond on the caption, task); `collate` keeps
Show-o's own [PAD] tokens invalid. Task ids are modlab's (TASK_ID: t2i 0, mmu 1, lm 2), which
is also the router index of UniMoD's per-task routers (modlab.routing.hf_routed_layer).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from modlab.data.rows import collate_rows
from modlab.data.tokens import IGNORE_INDEX, TASK_ID
from modlab.errors import CheckpointError, ConfigError
from modlab.models.omni_attention import omni_attention_mask
from modlab.models.showo import mask_image_codes, maskgit_loop
from modlab.models.unified_model import per_task_cross_entropy

PHI15_TEXT_VOCAB = 50295  # len(Phi-1.5's tokenizer); its config pads the embedding to 51200
PHI15_ENDOFTEXT = 50256  # <|endoftext|>: Show-o's <|sot|> and <|eot|>
SHOWO_CODEBOOK = 8192  # MAGVIT-v2 codes
# in id order after the text vocabulary: [PAD] first, then UniversalPrompting's special_tokens
SPECIALS = ("pad", "soi", "eoi", "sov", "eov", "t2i", "mmu", "t2v", "v2v", "lvg")
SHOWO_LOSS_WEIGHTS = {"t2i": 1.0, "mmu": 1.0, "lm": 0.1}  # t2i_coeff, mmu_coeff, lm_coeff
SHOWO_MAX_TEXT = 128  # dataset.preprocessing.max_seq_length: the T2I text field is this + 1
CHECKPOINT_PREFIX = "showo."


@dataclass(frozen=True)
class ShowoVocab:
    """Show-o's token layout: text, [PAD] + 9 specials, the codebook, [MASK] (the last id)."""

    n_text: int = PHI15_TEXT_VOCAB
    n_codes: int = SHOWO_CODEBOOK
    sot: int = PHI15_ENDOFTEXT
    eot: int = PHI15_ENDOFTEXT

    def __post_init__(self):
        if self.n_text < 1 or self.n_codes < 1:
            raise ConfigError(
                f"Show-o vocabulary needs n_text >= 1 and n_codes >= 1, got {self.n_text}, {self.n_codes}"
            )
        if not (0 <= self.sot < self.n_text and 0 <= self.eot < self.n_text):
            raise ConfigError(f"<|sot|> {self.sot} / <|eot|> {self.eot} must be text ids below {self.n_text}")

    def special(self, name: str) -> int:
        if name not in SPECIALS:
            raise ConfigError(f"Show-o has no special token '{name}'; it has {', '.join(SPECIALS)}")
        return self.n_text + SPECIALS.index(name)

    pad = property(lambda self: self.special("pad"))
    soi = property(lambda self: self.special("soi"))
    eoi = property(lambda self: self.special("eoi"))
    t2i = property(lambda self: self.special("t2i"))
    mmu = property(lambda self: self.special("mmu"))

    @property
    def image_offset(self) -> int:
        return self.n_text + len(SPECIALS)

    @property
    def mask(self) -> int:
        return self.image_offset + self.n_codes

    @property
    def size(self) -> int:
        return self.mask + 1


# ---- the model ---------------------------------------------------------------------------------


def build_showo_phi(
    phi_dir_or_config,
    n_codes: int = SHOWO_CODEBOOK,
    n_text: int = PHI15_TEXT_VOCAB,
    *,
    load_phi_weights: bool = True,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, ShowoVocab]:
    """A PhiForCausalLM shaped as Show-o's: qk_layernorm on, embeddings and head resized to
    ShowoVocab(n_text, n_codes).size. `phi_dir_or_config`: a local Phi directory (its weights
    are loaded unless load_phi_weights=False: Show-o trained from Phi-1.5 this way) or a PhiConfig
    (random weights: tests, or a shell for load_showo_checkpoint). `n_text` is the tokenizer's
    length (Phi's config pads its embedding beyond it). <|sot|> / <|eot|> are the config's
    bos / eos ids."""
    try:
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from transformers import PhiConfig, PhiForCausalLM
    except ImportError:
        raise ConfigError("Show-o on Phi needs transformers: pip install 'modlab[hf]'") from None
    path = None
    if isinstance(phi_dir_or_config, (str, Path)):
        path = Path(phi_dir_or_config)
        if not (path / "config.json").is_file():
            raise ConfigError(f"'{path}' is not a Phi model directory (no config.json)")
        config = PhiConfig.from_pretrained(path, local_files_only=True)
    elif isinstance(phi_dir_or_config, PhiConfig):
        config = copy.deepcopy(phi_dir_or_config)
    else:
        raise ConfigError(
            f"build_showo_phi takes a Phi directory or a PhiConfig, got {type(phi_dir_or_config).__name__}"
        )
    if config.model_type != PhiConfig.model_type:
        raise ConfigError(f"Show-o's backbone is Phi, got a '{config.model_type}' config")
    if not 0 < n_text <= config.vocab_size:
        raise ConfigError(f"n_text {n_text} must be in 1..{config.vocab_size} (the Phi embedding's rows)")
    vocab = ShowoVocab(n_text, n_codes, sot=_token_id(config.bos_token_id), eot=_token_id(config.eos_token_id))
    config.qk_layernorm = True  # Show-o's phi.py sets it whatever the config says
    config.use_cache = False
    if path is not None and load_phi_weights:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            model = PhiForCausalLM.from_pretrained(
                path, config=config, local_files_only=True, attn_implementation=attn_implementation, dtype=dtype
            )
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"'{path}': the Phi weights could not be loaded ({type(e).__name__})") from None
    else:
        config._attn_implementation = attn_implementation
        model = PhiForCausalLM(config)
        if dtype is not None:
            model.to(dtype)
    # Show-o's transformers (4.41) drew the new rows from N(0, initializer_range)
    model.resize_token_embeddings(vocab.size, mean_resizing=False)
    return model, vocab


def _token_id(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def load_showo_checkpoint(model: nn.Module, checkpoint) -> nn.Module:
    """Load Show-o's released weights (a state dict with `showo.`-prefixed keys, or a file /
    directory holding one) into the PhiForCausalLM of build_showo_phi, strictly: any missing,
    unexpected or mis-shaped tensor is one CheckpointError line."""
    state = _read_state_dict(checkpoint)
    mapped, unexpected = {}, []
    for key, value in state.items():
        if key.startswith(CHECKPOINT_PREFIX) and isinstance(value, torch.Tensor):
            mapped[key[len(CHECKPOINT_PREFIX) :]] = value
        else:
            unexpected.append(key)
    expected = model.state_dict()
    missing = sorted(CHECKPOINT_PREFIX + k for k in expected.keys() - mapped.keys())
    unexpected += sorted(CHECKPOINT_PREFIX + k for k in mapped.keys() - expected.keys())
    wrong = [
        f"{CHECKPOINT_PREFIX}{k}: checkpoint {tuple(mapped[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(mapped.keys() & expected.keys())
        if mapped[k].shape != expected[k].shape
    ]
    found = (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong))
    problems = [_listed(what, names) for what, names in found if names]
    if problems:
        clip = any("mm_projector" in k for k in unexpected)
        hint = " (mm_projector: the CLIP-ViT variant is not supported)" if clip else ""
        raise CheckpointError("the Show-o checkpoint does not fit the model: " + "; ".join(problems) + hint)
    model.load_state_dict(mapped, strict=True)
    return model


def _listed(what: str, names: list[str], show: int = 3) -> str:
    more = f", ... ({len(names) - show} more)" if len(names) > show else ""
    return f"{len(names)} {what} ({', '.join(names[:show])}{more})"


def _read_state_dict(checkpoint) -> dict:
    if isinstance(checkpoint, dict):
        return checkpoint
    path = Path(checkpoint)
    if path.is_dir():  # Show-o's ModelMixin names its weights pytorch_model.{safetensors,bin}
        found = [path / n for n in ("pytorch_model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"'{path}' holds no pytorch_model.safetensors or pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"Show-o checkpoint '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable in any of the ways a file can be: one line
        raise CheckpointError(f"Show-o checkpoint '{path}' could not be read ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Show-o checkpoint '{path}' holds a {type(state).__name__}, not a state dict")
    return state


# ---- omni-attention and the forward ------------------------------------------------------------


def showo_attention_blocks(is_image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T) the tokens Show-o lets attend bidirectionally: each image segment [soi] codes [eoi]
    (the codes are `is_image`; Show-o always wraps them) and, in rows where text follows the
    image (MMU), every token before it ([mmu] [soi]), which Show-o's MMU mask shows the image."""
    block = is_image.clone()
    block[:, :-1] |= is_image[:, 1:]  # [soi]
    block[:, 1:] |= is_image[:, :-1]  # [eoi]
    T = is_image.shape[1]
    pos = torch.arange(T, device=is_image.device).expand_as(is_image)
    first = torch.where(is_image, pos, T).min(1).values
    last = torch.where(is_image, pos, -1).max(1).values
    understanding = (valid & (pos > last[:, None] + 1)).any(1) & is_image.any(1)
    return block | ((pos < first[:, None]) & valid & understanding[:, None])


def omni_attention_4d(is_image: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Show-o's mask for transformers' Phi layers, (B, 1, T, T). PhiModel hands a 4D mask to its
    layers unchanged (create_causal_mask returns it as is); eager attention adds it to the scores
    and SDPA takes it as attn_mask, so a float dtype gives the additive mask both accept (0 /
    finfo.min, as Show-o's own) and torch.bool a boolean one (SDPA only). The rule is modlab's
    (omni_attention_mask) over showo_attention_blocks; every token sees itself (no empty row)."""
    allowed = omni_attention_mask(showo_attention_blocks(is_image, valid), valid)
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def showo_logits(
    model: nn.Module,
    ids: torch.Tensor,
    is_image: torch.Tensor,
    valid: torch.Tensor,
    routing=None,
    task: torch.Tensor | None = None,
    always: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (B, T, vocab) of the PhiForCausalLM under Show-o's omni-attention. Positions are
    0..T-1 (Show-o's, padding included). With token routing installed pass `routing` (the
    HFRouting of install_hf_routing): its layers get each row's task id and its valid tokens (the
    mask alone would not tell them: padding sees itself, so it would count as valid), and
    `always` (B, T), tokens that are not routed but run every layer (e.g. all but the image)."""
    mask = omni_attention_4d(is_image, valid, model.dtype)
    inputs = routing.inputs(task=task, valid=valid, always=always) if routing is not None else nullcontext()
    with inputs:
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


# ---- rows --------------------------------------------------------------------------------------


def _row(ids: list[int], labels: list[int], is_image: list[bool], cond: list[bool], task: str) -> dict:
    return {
        "ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "is_image": torch.tensor(is_image, dtype=torch.bool),
        "cond": torch.tensor(cond, dtype=torch.bool),
        "task": torch.tensor(TASK_ID[task]),
        "digit": torch.tensor(-1),
    }


def _codes_as_ids(vocab: ShowoVocab, codes: torch.Tensor | None, n_tokens: int) -> list[int]:
    if codes is None:
        return [vocab.mask] * n_tokens
    codes = torch.as_tensor(codes).long().flatten()
    if codes.numel() != n_tokens or (
        codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < vocab.n_codes)
    ):
        raise ConfigError(f"an image must be {n_tokens} codes in [0, {vocab.n_codes})")
    return (codes + vocab.image_offset).tolist()


def t2i_row(
    vocab: ShowoVocab, caption: list[int], codes: torch.Tensor | None, n_tokens: int, max_text_len: int = SHOWO_MAX_TEXT
) -> dict:
    """[PAD]... [t2i] [sot] caption [eot] [soi] image [eoi]: the text field left-padded (or cut,
    keeping [eot]) to max_text_len + 1 as Show-o's t2i_prompt; codes=None: an all-[MASK] prompt.
    `caption`: tokenizer ids, with or without a leading <|sot|>."""
    text = list(caption) if caption and caption[0] == vocab.sot else [vocab.sot, *caption]
    field = [vocab.t2i, *text, vocab.eot]
    width = max_text_len + 1
    if width < 3:
        raise ConfigError(f"max_text_len must be >= 2 (room for [t2i] [sot] [eot]), got {max_text_len}")
    if len(field) > width:
        field = field[: width - 1] + [vocab.eot]
    n_pad = width - len(field)
    img = _codes_as_ids(vocab, codes, n_tokens)
    ids = [vocab.pad] * n_pad + field + [vocab.soi, *img, vocab.eoi]
    is_image = [False] * (width + 1) + [True] * n_tokens + [False]
    cond = [False] * (n_pad + 2) + [True] * (len(field) - 3) + [False] * (n_tokens + 3)
    return _row(ids, [IGNORE_INDEX] * len(ids), is_image, cond, "t2i")


def mmu_row(vocab: ShowoVocab, codes: torch.Tensor, question: list[int], answer: list[int] | None = None) -> dict:
    """[mmu] [soi] image [eoi] [sot] question (answer [eot]): the next-token loss on the answer
    and [eot] (answer=None: a prompt to decode). An empty question is Show-o's captioning row."""
    img = _codes_as_ids(vocab, codes, len(torch.as_tensor(codes).flatten()))
    prefix = [vocab.mmu, vocab.soi, *img, vocab.eoi, vocab.sot, *question]
    ids = prefix + ([] if answer is None else [*answer, vocab.eot])
    labels = [IGNORE_INDEX] * len(ids)
    for i in range(len(prefix) - 1, len(ids) - 1):  # position i predicts token i + 1
        labels[i] = ids[i + 1]
    is_image = [False, False] + [True] * len(img) + [False] * (len(ids) - 2 - len(img))
    return _row(ids, labels, is_image, [False] * len(ids), "mmu")


def lm_row(vocab: ShowoVocab, text: list[int]) -> dict:
    """[sot] text [eot] with the next-token loss on every token after [sot]."""
    ids = [vocab.sot, *text, vocab.eot]
    n = len(ids)
    return _row(ids, ids[1:] + [IGNORE_INDEX], [False] * n, [False] * n, "lm")


def collate(rows: list[dict], vocab: ShowoVocab) -> dict:
    """Right-pad rows into a batch (modlab.data.rows.collate_rows); Show-o's own [PAD] tokens
    (the T2I text field's left padding) are invalid too."""
    batch = collate_rows(rows, vocab.pad)
    batch["valid"] &= batch["ids"] != vocab.pad
    return batch


def empty_captions(batch: dict, vocab: ShowoVocab, rows: torch.Tensor | None = None) -> dict:
    """The batch with the captions of T2I `rows` (default: every T2I row) replaced by Show-o's
    empty caption, [PAD]... [t2i] [sot] [eot] right before [soi]: its caption dropout and the
    unconditional half of classifier-free guidance. The image keeps its positions."""
    ids, valid, cond = batch["ids"].clone(), batch["valid"].clone(), batch["cond"].clone()
    t2i = batch["task"] == TASK_ID["t2i"]
    rows = t2i if rows is None else rows & t2i
    if not bool(rows.any()):
        return {**batch, "ids": ids, "valid": valid, "cond": cond}
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device).expand(B, T)
    soi = torch.where(batch["is_image"], pos, T).min(1).values - 1  # (B,)
    if bool((soi[rows] < 3).any()):
        raise ConfigError("a T2I row needs [t2i] [sot] [eot] before [soi] to take an empty caption")
    field = rows[:, None] & (pos < soi[:, None])
    tail = soi[:, None] - pos  # 3, 2, 1 on the [t2i] [sot] [eot] slots
    empty = torch.full_like(ids, vocab.pad)
    for back, token in ((3, vocab.t2i), (2, vocab.sot), (1, vocab.eot)):
        empty = empty.masked_fill(tail == back, token)
    ids = torch.where(field, empty, ids)
    valid = torch.where(field, tail <= 3, valid)
    cond &= ~field
    labels = batch["labels"].masked_fill(field, IGNORE_INDEX)
    return {**batch, "ids": ids, "valid": valid, "cond": cond, "labels": labels}


# ---- MaskGIT and the losses --------------------------------------------------------------------


def mask_image_tokens(
    batch: dict, vocab: ShowoVocab, generator: torch.Generator | None = None, cond_dropout: float = 0.0
) -> dict:
    """Show-o's T2I training targets: per T2I row round(cos(pi t / 2) * n) codes masked (t ~ U(0,
    1), at least one), labels on the masked codes only; with `cond_dropout` (Show-o: 0.1) that
    share of T2I rows gets the empty caption (empty_captions)."""
    out = mask_image_codes(batch, vocab.mask, generator, rounding="round")
    if cond_dropout > 0:
        drop = torch.rand(len(out["ids"]), generator=generator, device=out["ids"].device) < cond_dropout
        out = empty_captions(out, vocab, drop)
    return out


@torch.no_grad()
def maskgit_sample(
    model: nn.Module,
    prompts: dict,
    vocab: ShowoVocab,
    steps: int = 18,
    guidance: float = 0.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    routing=None,
    logits_of=None,
) -> torch.Tensor:
    """Image codes (B, n) for T2I prompt rows (t2i_row with codes=None), by Show-o's MaskGIT
    (see the module docstring). With guidance > 0 the conditional rows and their empty-caption
    copies run as one batch of 2B rows. `logits_of(ids, is_image, valid, task)`: the logits of a
    batch of rows; default showo_logits of `model` with `routing` (modlab.models.hf_unified.hf_showo
    passes its own, which also tells the routed layers which tokens are routed)."""
    if logits_of is None:

        def logits_of(ids, is_image, valid, task):
            return showo_logits(model, ids, is_image, valid, routing, task)

    ids, is_image, valid, task = prompts["ids"], prompts["is_image"], prompts["valid"], prompts["task"]
    n_img = is_image.sum(1)
    if not bool((task == TASK_ID["t2i"]).all()) or not bool((n_img == n_img[0]).all()) or int(n_img[0]) == 0:
        raise ConfigError("maskgit_sample takes T2I prompt rows with the same number of image tokens")
    if steps < 1:
        raise ConfigError(f"maskgit_sample needs steps >= 1, got {steps}")
    if guidance > 0:
        uncond = empty_captions(prompts, vocab)
        both_image, both_valid = torch.cat([is_image, is_image]), torch.cat([valid, uncond["valid"]])
        both_task = torch.cat([task, task])

    def logits_fn(current: torch.Tensor) -> torch.Tensor:
        if guidance <= 0:
            return logits_of(current, is_image, valid, task)
        # the unconditional rows carry the same (partly unmasked) image as the conditional ones
        both = torch.cat([current, torch.where(is_image, current, uncond["ids"])])
        cond_logits, uncond_logits = logits_of(both, both_image, both_valid, both_task).chunk(2)
        return (1 + guidance) * cond_logits - guidance * uncond_logits

    return maskgit_loop(
        logits_fn, ids, is_image, vocab.image_offset, vocab.n_codes, vocab.mask, steps, temperature, generator,
        released_showo=True,
    )  # fmt: skip


def showo_task_losses(
    model: nn.Module, batch: dict, vocab: ShowoVocab, weights: dict | None = None, routing=None
) -> dict[str, torch.Tensor]:
    """{"t2i", "mmu", "lm"} (those present in the batch): mean token cross-entropy over the
    labelled tokens of each task's rows (t2i: the masked codes of mask_image_tokens; mmu: the
    answer; lm: next token), and "loss": their sum weighted by `weights` (Show-o's 1.0 / 1.0 /
    0.1 by default)."""
    weights = SHOWO_LOSS_WEIGHTS if weights is None else weights
    if set(weights) - set(SHOWO_LOSS_WEIGHTS):
        raise ConfigError(f"loss weights are for {', '.join(SHOWO_LOSS_WEIGHTS)}, got {', '.join(weights)}")
    if int(batch["ids"].max()) >= vocab.size or int(batch["labels"].max()) >= vocab.size:
        raise ConfigError(f"token ids must be below the Show-o vocabulary's {vocab.size}")
    logits = showo_logits(model, batch["ids"], batch["is_image"], batch["valid"], routing, batch["task"])
    losses = per_task_cross_entropy(logits, batch["labels"], batch["task"])
    losses["loss"] = sum(weights.get(name, 0.0) * value for name, value in losses.items())
    return losses
