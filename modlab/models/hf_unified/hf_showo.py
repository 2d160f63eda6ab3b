"""The `hf_showo` family's model: Show-o on transformers' PhiForCausalLM (modlab.models.hf_unified.showo_phi)
behind the Hugging Face unified interface (modlab.models.hf_unified), so that modlab's training,
test, generation and analyses run on it as on Emu3.

A `hf_showo` model directory (model.path):
    config.json, model.safetensors   a PhiForCausalLM saved with save_pretrained whose vocabulary
                                     already is Show-o's (ShowoVocab(n_text, n_codes).size rows,
                                     qk_layernorm on; build_showo_phi makes one from Phi-1.5);
      or config.json + pytorch_model.{safetensors,bin}
                                     Phi's config and Show-o's released weights (`showo.`-prefixed
                                     keys): the model is built by build_showo_phi (resized to the
                                     Show-o vocabulary) and loaded strictly by load_showo_checkpoint
    tokenizer files                  the text tokenizer (AutoTokenizer; Show-o's is Phi-1.5's)
    showo_vocab.json                 the marker of the layout: {"n_text", "n_codes", "sot", "eot",
                                     "max_text_len"} (ShowoVocab; max_text_len: T2I text field)
    showo_image_codebook.safetensors the image tokenizer: a stand-in for MAGVIT-v2, which is not in
                                     transformers (modlab.data.showo_codec); its codebook size
                                     must be showo_vocab.json's n_codes
`save_showo_directory` writes one; `load_hf_showo` (the hf_showo family's loader: load_hf_unified) reads it.

Rows are hf_showo's (Show-o's own layout: T2I's text field left-padded with [PAD] to a fixed
width, MMU with Show-o's "USER: ... ASSISTANT:" prompt) with each token's `kind` added. Show-o's
[PAD] is never a valid token (it is masked out of the omni-attention and never routed), whatever
the collation said, so rows collate with the generic collate_rows / left_pad.

How routing behaves here:
    training   top-k per task router over the routable kinds (route_tokens), as everywhere.
    T2I        MaskGIT (Show-o's t2i_generate) with guidance as one batch of 2B rows. Every step is
               a full forward over whole rows, as a training step's forward over a partly masked
               image is, so the routed layers decide by top-k exactly as in training: no causal
               decision is needed and threshold_routing is not applied, whatever routing.causal is.
    MMU, LM    token by token. The answer is decoded greedily by recomputing the whole row at
               every step, as Show-o's own mmu_generate does (no KV cache), under threshold_routing:
               routed layers with a causal decision (routing.causal=aux_bce / predictor) use it, as
               the other families do while decoding, so routing.causal matters for these tasks only.
               A KV cache would be valid for Show-o's mask (the image prefix never sees later
               text), but without one any routing decision can be taken per step; the cost is a
               quadratic decode, small for short answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from modlab.data.digits import load_digit_splits
from modlab.data.rows import same_length_batches
from modlab.data.showo_codec import SHOWO_CODEBOOK_FILE, PatchCodebookCodec
from modlab.data.tokens import IGNORE_INDEX
from modlab.data.vq_codec import digits_as_rgb
from modlab.errors import CheckpointError, ConfigError
from modlab.models.hf_causal_lm import TORCH_DTYPES, resolve_dtype
from modlab.models.hf_unified import showo_phi as S
from modlab.models.hf_unified.base import KIND_ID, HFUnifiedModel
from modlab.routing.install import threshold_routing

SHOWO_MARKER = "showo_vocab.json"
# Show-o's MMU inference prompt (inference_mmu.py): the question between "USER: \n" and " ASSISTANT:"
SHOWO_QUESTION = "USER: \n{question} ASSISTANT:"
RELEASED_WEIGHTS = ("pytorch_model.safetensors", "pytorch_model.bin")  # Show-o's ModelMixin names them so


@dataclass
class ShowoPrompting:
    """What Show-o's UniversalPrompting holds: the text tokenizer and the vocabulary layout (the
    HFUnifiedModel's `processor`)."""

    tokenizer: object
    vocab: S.ShowoVocab
    max_text_len: int = S.SHOWO_MAX_TEXT


def _kinds(row: dict, *spans: tuple[str, int]) -> torch.Tensor:
    kinds = [k for k, n in spans for _ in range(n)]
    if len(kinds) != len(row["ids"]):
        raise AssertionError(f"{len(kinds)} kinds for {len(row['ids'])} tokens")
    return torch.tensor([KIND_ID[k] for k in kinds], dtype=torch.long)


class HFShowo(HFUnifiedModel):
    """Show-o on PhiForCausalLM (see the module docstring)."""

    decodes_with_cache = False  # MaskGIT steps and MMU answers recompute whole rows

    model_type = "showo"  # what model.arch=hf_showo loads (the transformers model_type is "phi")

    def __init__(self, hf, prompting: ShowoPrompting, codec, path, route_tokens=("image",)):
        super().__init__(hf, prompting, codec, path, route_tokens)
        self.vocab, self.max_text_len = prompting.vocab, prompting.max_text_len
        if codec.n_codes != self.vocab.n_codes:
            raise ConfigError(
                f"the image tokenizer has {codec.n_codes} codes, the Show-o vocabulary {self.vocab.n_codes}"
            )
        self.pad = self.vocab.pad

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self.vocab.n_text], skip_special_tokens=True)

    # ---- rows --------------------------------------------------------------------------------------

    def _finish(self, row: dict, kind: torch.Tensor, digit: int) -> dict:
        return {**row, "kind": kind, "digit": torch.tensor(digit)}

    def t2i_row(self, caption, codes, digit=-1) -> dict:
        row = S.t2i_row(self.vocab, self.text_ids(caption), codes, self.codec.n_tokens, self.max_text_len)
        kind = torch.where(row["cond"], KIND_ID["caption"], KIND_ID["special"]).masked_fill(
            row["is_image"], KIND_ID["image"]
        )
        return self._finish(row, kind, digit)

    def t2i_prompt(self, caption: str, digit: int = -1) -> dict:
        """The T2I row with an all-[MASK] image: what MaskGIT starts from."""
        return self.t2i_row(caption, None, digit)

    def mmu_row(self, codes, question, answer, digit=-1) -> dict:
        q = self.text_ids(SHOWO_QUESTION.format(question=question))
        a = None if answer is None else self.text_ids(" " + answer)
        row = S.mmu_row(self.vocab, codes, q, a)
        n_img = int(row["is_image"].sum())
        spans = [("special", 2), ("image", n_img), ("special", 2), ("question", len(q))]
        if a is not None:
            spans += [("answer", len(a)), ("special", 1)]
        return self._finish(row, _kinds(row, *spans), digit)

    def lm_row(self, text: str) -> dict:
        row = S.lm_row(self.vocab, self.text_ids(text))
        return self._finish(row, _kinds(row, ("special", 1), ("text", len(row["ids"]) - 2), ("special", 1)), -1)

    # ---- forward and training ------------------------------------------------------------------------

    def kinds_of(self, ids: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        """Token kinds read off the ids alone (Show-o's ids tell image codes and specials apart),
        for callers that pass none: image, special (every id past the text vocabulary, and
        <|sot|> / <|eot|>, which rows hold nowhere else), text."""
        v = self.vocab
        special = (ids >= v.n_text) | (ids == v.sot) | (ids == v.eot)
        kind = torch.where(special, KIND_ID["special"], KIND_ID["text"])
        return kind.masked_fill(is_image, KIND_ID["image"])

    def real_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return ids != self.pad  # Show-o's [PAD] is masked out of the attention and never routed

    def forward(self, ids, is_image, valid, task=None, kind=None) -> torch.Tensor:
        """Logits (B, T, vocab) under Show-o's omni-attention (positions 0..T-1, padding
        included, as Show-o's); [PAD] is never valid."""
        valid = valid & self.real_tokens(ids)
        if task is None:
            task = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        if kind is None:
            kind = self.kinds_of(ids, is_image)
        always = self.not_routed(kind) if self.routing is not None else None
        if self.skip is not None:  # MindSkip gates pool each row's valid tokens
            with self.skip.context(valid=valid):
                return S.showo_logits(self.hf, ids, is_image, valid, self.routing, task, always)
        return S.showo_logits(self.hf, ids, is_image, valid, self.routing, task, always)

    def training_batch(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """Show-o's T2I targets: masked image codes (labels on them only) and, for a
        `cond_dropout` share of T2I rows, the empty caption (hf_showo.mask_image_tokens); the
        tokens the empty caption rewrote are specials ([t2i] [sot] [eot]) or [PAD]."""
        out = S.mask_image_tokens(batch, self.vocab, generator, cond_dropout)
        rewritten = (out["ids"] != batch["ids"]) & ~batch["is_image"]
        return {**out, "kind": batch["kind"].masked_fill(rewritten, KIND_ID["special"])}

    # ---- inference ------------------------------------------------------------------------------------

    @torch.no_grad()
    def answer(self, prompts: dict, max_new_tokens: int = 16) -> list[str]:
        """Greedy MMU answers (text ids only), to <|eot|>; the whole row recomputed each step (no
        KV cache, as Show-o's mmu_generate), routed layers by their causal decision. Prompts of
        different lengths (left- or right-padded) are decoded in groups of one length."""
        valid = prompts["valid"]
        lengths = valid.sum(1).tolist()
        out: list[str] = [""] * len(lengths)
        for group in same_length_batches(lengths, len(lengths)):
            rows = {k: torch.stack([prompts[k][r][valid[r]] for r in group]) for k in ("ids", "is_image", "kind")}
            for r, text in zip(group, self._decode(rows, prompts["task"][group], max_new_tokens)):
                out[r] = text
        return out

    def _decode(self, rows: dict, task: torch.Tensor, max_new_tokens: int) -> list[str]:
        ids, is_image, kind = rows["ids"], rows["is_image"], rows["kind"]
        start, eot = ids.shape[1], self.vocab.eot
        B, dev = ids.shape[0], ids.device
        new = lambda value, dtype=torch.long: torch.full((B, 1), value, dtype=dtype, device=dev)  # noqa: E731
        with threshold_routing(self):
            for _ in range(max_new_tokens):
                logits = self(ids, is_image, torch.ones_like(is_image), task, kind)[:, -1, : self.vocab.n_text]
                nxt = logits.float().argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
                is_image = torch.cat([is_image, new(False, torch.bool)], 1)
                kind = torch.cat([kind, new(KIND_ID["answer"])], 1)
                if bool((ids[:, start:] == eot).any(1).all()):
                    break
        texts = []
        for row in ids[:, start:].tolist():
            texts.append(self.decode_text(row[: row.index(eot)] if eot in row else row))
        return texts

    @torch.no_grad()
    def sample_images(self, prompts, steps=12, guidance=0.0, temperature=1.0, generator=None) -> torch.Tensor:
        """Image codes (B, n) for T2I prompts (t2i_prompt rows) by Show-o's MaskGIT
        (hf_showo.maskgit_sample; guidance as one 2B batch); routed layers by top-k, as in
        training (see the module docstring)."""
        base_ids, base_kind = prompts["ids"], prompts["kind"]
        batch = {**prompts, "valid": prompts["valid"] & self.real_tokens(base_ids)}
        batch.setdefault("labels", torch.full_like(base_ids, IGNORE_INDEX))

        def logits_of(ids, is_image, valid, task):
            # the unconditional copies: the tokens the empty caption rewrote are specials or [PAD]
            reps = ids.shape[0] // base_ids.shape[0]
            rewritten = (ids != base_ids.repeat(reps, 1)) & ~is_image
            kind = base_kind.repeat(reps, 1).masked_fill(rewritten, KIND_ID["special"])
            return self(ids, is_image, valid, task, kind)

        return S.maskgit_sample(
            self.hf, batch, self.vocab, steps, guidance, temperature, generator, logits_of=logits_of
        )


# ---- the directory ---------------------------------------------------------------------------------


def read_showo_vocab(path: Path) -> tuple[S.ShowoVocab, int, str]:
    """(vocabulary, max_text_len, codebook file name) from a directory's showo_vocab.json."""
    marker = path / SHOWO_MARKER
    try:
        spec = json.loads(marker.read_text())
        vocab = S.ShowoVocab(int(spec["n_text"]), int(spec["n_codes"]), int(spec["sot"]), int(spec["eot"]))
        max_text_len = int(spec.get("max_text_len", S.SHOWO_MAX_TEXT))
        codebook = str(spec.get("image_tokenizer", SHOWO_CODEBOOK_FILE))
    except ConfigError as e:
        raise ConfigError(f"model.path '{path}': {SHOWO_MARKER}: {e}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"model.path '{path}': {SHOWO_MARKER} is not Show-o's vocabulary layout "
            f"(n_text, n_codes, sot, eot; {type(e).__name__})"
        ) from None
    if max_text_len < 2:
        raise ConfigError(f"model.path '{path}': {SHOWO_MARKER}: max_text_len must be >= 2, got {max_text_len}")
    return vocab, max_text_len, codebook


def save_showo_directory(path, model, vocab: S.ShowoVocab, tokenizer, codec: PatchCodebookCodec, max_text_len=None):
    """Write a `hf_showo` model directory (see the module docstring): the PhiForCausalLM of
    build_showo_phi, its tokenizer, the image codebook and showo_vocab.json."""
    path = Path(path)
    if codec.n_codes != vocab.n_codes:
        raise ConfigError(f"the image codebook has {codec.n_codes} codes, the Show-o vocabulary {vocab.n_codes}")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    codec.save(path)
    spec = {
        "n_text": vocab.n_text,
        "n_codes": vocab.n_codes,
        "sot": vocab.sot,
        "eot": vocab.eot,
        "max_text_len": S.SHOWO_MAX_TEXT if max_text_len is None else int(max_text_len),
        "image_tokenizer": SHOWO_CODEBOOK_FILE,
    }
    (path / SHOWO_MARKER).write_text(json.dumps(spec, indent=2) + "\n")
    return path


def fit_digit_codebook(resolution: int, n_codes: int, patch: int, split_seed: int = 0, seed: int = 0):
    """The stand-in codebook fitted on the training digits rendered as RGB at `resolution`."""
    train = load_digit_splits(split_seed)["train"]
    return PatchCodebookCodec.fit(digits_as_rgb(train.images, resolution), n_codes, patch, seed)


def load_hf_showo(family, path: Path, config, resolution: int = 0, route_tokens=("image",), dtype: str = "float32"):
    """The HFShowo of a `hf_showo` directory (in eval mode); a Phi directory without
    showo_vocab.json, and every way the directory can be wrong, is one ConfigError /
    CheckpointError line."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (path / SHOWO_MARKER).is_file():
        raise ConfigError(
            f"model.path '{path}' holds a Phi model without Show-o's vocabulary ({SHOWO_MARKER}): a hf_showo "
            "directory is Show-o's Phi with its tokenizer, image codebook and that file (save_showo_directory)"
        )
    vocab, max_text_len, codebook = read_showo_vocab(path)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"model.path '{path}': its tokenizer could not be loaded ({type(e).__name__})") from None
    if len(tokenizer) < vocab.n_text:
        raise ConfigError(
            f"model.path '{path}': the tokenizer has {len(tokenizer)} tokens, fewer than {SHOWO_MARKER}'s "
            f"n_text {vocab.n_text}"
        )
    codec = family.unified.part("codec").load(path / codebook)
    if codec.n_codes != vocab.n_codes:
        raise ConfigError(
            f"model.path '{path}': the image codebook has {codec.n_codes} codes, {SHOWO_MARKER} says n_codes "
            f"{vocab.n_codes}"
        )
    if resolution and resolution != codec.resolution:
        raise ConfigError(
            f"model.resolution={resolution}: the image codebook in '{path}' was fitted at {codec.resolution} "
            "(model.resolution=0 takes it)"
        )
    hf = _load_phi(path, config, vocab, dtype)
    prompting = ShowoPrompting(tokenizer, vocab, max_text_len)
    return family.unified.part("model")(hf.eval(), prompting, codec, str(path.resolve()), route_tokens)


def _load_phi(path: Path, config, vocab: S.ShowoVocab, dtype: str):
    """save_pretrained's weights (model.safetensors) as they are, or Show-o's released layout."""
    # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
    from transformers import PhiForCausalLM

    torch_dtype = TORCH_DTYPES[resolve_dtype(dtype, None)]
    saved = any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json"))
    if not saved and any((path / n).is_file() for n in RELEASED_WEIGHTS):
        model, _ = S.build_showo_phi(config, vocab.n_codes, vocab.n_text, load_phi_weights=False)
        return S.load_showo_checkpoint(model, path).to(torch_dtype)
    if config.vocab_size != vocab.size:
        raise ConfigError(
            f"model.path '{path}': the Phi model has {config.vocab_size} token embeddings, {SHOWO_MARKER}'s layout "
            f"{vocab.size} (n_text + 10 specials + n_codes + [MASK])"
        )
    if not getattr(config, "qk_layernorm", False):
        raise ConfigError(f"model.path '{path}': Show-o's Phi normalises queries and keys (config.qk_layernorm: true)")
    try:
        return PhiForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"model.path '{path}': the weights could not be loaded ({type(e).__name__})") from None
